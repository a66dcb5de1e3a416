"""Known checkpoints and where they live (Hugging Face cache or a local directory)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .model.loading import ModelLoadError


@dataclass(frozen=True)
class KnownCheckpoint:
    name: str
    repo_id: str
    revision: str
    size_gb: float
    note: str


REGISTRY = {
    "unipixel-3b": KnownCheckpoint("unipixel-3b", "PolyU-ChenLab/UniPixel-3B", "main", 8.2,
                                   "default; ReVOS J&F 62.1 in the paper"),
    "unipixel-7b": KnownCheckpoint("unipixel-7b", "PolyU-ChenLab/UniPixel-7B", "main", 17.0,
                                   "ReVOS J&F 63.7 in the paper"),
}
DEFAULT_MODEL = "PolyU-ChenLab/UniPixel-3B"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def lookup(name: str) -> KnownCheckpoint | None:
    if name.lower() in REGISTRY:
        return REGISTRY[name.lower()]
    return next((c for c in REGISTRY.values() if c.repo_id.lower() == name.lower()), None)


def cached_path(repo_id: str, revision: str = "main") -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:
        return None


def resolve_model(name: str) -> Path:
    """A local checkpoint directory for `--model` (a directory, a short name or a hub id)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name.startswith("tiny-random"):
        from .model.tiny import tiny_random_path

        seed = name.removeprefix("tiny-random").lstrip("-") or "0"
        if not seed.isdigit():
            raise ModelLoadError(f"--model {name!r}: use tiny-random or tiny-random-<seed>")
        return tiny_random_path(int(seed))
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:  # a path, never a hub id (owner/name)
        raise ModelLoadError(f"--model {name}: no such checkpoint directory")
    known = lookup(name)
    repo_id, revision = (known.repo_id, known.revision) if known else (name, "main")
    if "/" not in repo_id:
        raise ModelLoadError(f"--model {name!r} is neither a directory, a known name "
                             f"({', '.join(REGISTRY)}) nor a hub id like owner/name")
    local = cached_path(repo_id, revision)
    if local is not None:
        return local
    if offline():
        raise ModelLoadError(f"{repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                             f"run `unipixel weights pull {repo_id}` on a machine with network. {NEXT_STEP}")
    try:
        return pull(repo_id, revision)
    except ModelLoadError as e:
        raise ModelLoadError(f"{e} {NEXT_STEP}") from e


# What a first run without the weights (no network, no GPU) can do next: said by --model errors
# only, since `weights pull` has no --model to change.
NEXT_STEP = ("To try the tool offline: `unipixel segment examples/videos.jsonl -o smoke/ --model tiny-random`; "
             "or give --model a local checkpoint directory.")


def _reason(e: Exception) -> str:
    """The first line of a hub error, without huggingface_hub's long advice paragraph."""
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    first = first.removeprefix("Got: ")
    return first if len(first) <= 160 else first[:157] + "..."


def pull(repo_id: str, revision: str = "main") -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]))
    except Exception as e:
        raise ModelLoadError(f"cannot download {repo_id} from the Hugging Face hub ({_reason(e)}); check the "
                             "network (or HF_ENDPOINT, proxy settings) and run it again: downloads resume.") from e
