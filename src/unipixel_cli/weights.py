"""Known checkpoints and where they live (Hugging Face cache or a local directory).

The registry itself is data: `weights/registry.json` at the top of a checkout, shipped in the
wheel as `unipixel_cli/_weights/registry.json`.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from .model.loading import ModelLoadError

PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "_weights"  # inside an installed wheel
CHECKOUT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"  # src/unipixel_cli/ -> repo root
REVISION_SEPARATOR = "@"  # `--model repo@rev`: how --revision travels with the model name


class WeightFile(BaseModel):
    size: int | None = None
    sha256: str | None = None


class KnownCheckpoint(BaseModel):
    name: str
    repo_id: str
    revision: str
    revision_pinned: bool = False  # True once `revision` is a commit hash confirmed on the hub
    size_gb: float
    files: dict[str, WeightFile] = Field(default_factory=dict)
    note: str = ""


class Registry(BaseModel):
    default: str
    checkpoints: list[KnownCheckpoint]


def weights_dir() -> Path:
    """The `weights/` data folder: packaged copy in a wheel, top-level folder in a checkout."""
    for candidate in (PACKAGED_WEIGHTS, CHECKOUT_WEIGHTS):
        if (candidate / "registry.json").is_file():
            return candidate
    raise ModelLoadError(f"weights registry not found (looked in {PACKAGED_WEIGHTS} and {CHECKOUT_WEIGHTS}); "
                         "reinstall unipixel")


@cache
def load_registry() -> Registry:
    path = weights_dir() / "registry.json"
    try:
        return Registry.model_validate_json(path.read_text())
    except (ValidationError, ValueError) as e:
        raise ModelLoadError(f"{path}: not a valid registry: {e}") from e


def known_checkpoints() -> dict[str, KnownCheckpoint]:
    return {c.name: c for c in load_registry().checkpoints}


def default_checkpoint() -> KnownCheckpoint:
    return known_checkpoints()[load_registry().default]


def tiny_recipe(name: str = "tiny-random") -> dict:
    """A tiny test checkpoint's recipe from `weights/tiny/<name>.json`."""
    return json.loads((weights_dir() / "tiny" / f"{name}.json").read_text())


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def lookup(name: str) -> KnownCheckpoint | None:
    known = known_checkpoints()
    if name.lower() in known:
        return known[name.lower()]
    return next((c for c in known.values() if c.repo_id.lower() == name.lower()), None)


def with_revision(model: str, revision: str | None) -> str:
    """`--model` and `--revision` as one string (`repo@rev`) for code that passes the model along."""
    return f"{model}{REVISION_SEPARATOR}{revision}" if revision else model


def split_revision(model: str) -> tuple[str, str | None]:
    """`repo@rev` -> (repo, rev); an existing directory is never split."""
    if REVISION_SEPARATOR in model and not Path(model).expanduser().is_dir():
        name, _, revision = model.rpartition(REVISION_SEPARATOR)
        return name, revision or None
    return model, None


def hub_target(name: str, revision: str | None = None) -> tuple[str, str]:
    """(hub id, revision): a known name or id takes the registry's revision unless one is given."""
    known = lookup(name)
    repo_id = known.repo_id if known else name
    return repo_id, revision or (known.revision if known else "main")


def cached_path(repo_id: str, revision: str = "main") -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:
        return None


def resolve_model(name: str, revision: str | None = None) -> Path:
    """A local checkpoint directory for `--model` (a directory, a short name or a hub id,
    optionally `name@revision`); `revision` (from `--revision`) wins over the registry's."""
    name, inline = split_revision(name)
    revision = revision or inline
    path = Path(name).expanduser()
    if path.is_dir() or name.startswith("tiny-random"):
        if revision:
            raise ModelLoadError(f"--revision {revision} applies to hub checkpoints, not to {name}")
        return path if path.is_dir() else _tiny_random(name)
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:  # a path, never a hub id (owner/name)
        raise ModelLoadError(f"--model {name}: no such checkpoint directory")
    repo_id, revision = hub_target(name, revision)
    if "/" not in repo_id:
        raise ModelLoadError(f"--model {name!r} is neither a directory, a known name "
                             f"({', '.join(known_checkpoints())}) nor a hub id like owner/name")
    local = cached_path(repo_id, revision)
    if local is not None:
        return local
    if offline():
        raise ModelLoadError(f"{repo_id}@{revision} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                             f"run `unipixel weights pull {repo_id} --revision {revision}` on a machine with "
                             f"network. {NEXT_STEP}")
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


def _tiny_random(name: str) -> Path:
    from .model.tiny import tiny_random_path

    seed = name.removeprefix("tiny-random").lstrip("-") or "0"
    if not seed.isdigit():
        raise ModelLoadError(f"--model {name!r}: use tiny-random or tiny-random-<seed>")
    return tiny_random_path(int(seed))


def pull(repo_id: str, revision: str = "main") -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]))
    except Exception as e:
        raise ModelLoadError(f"cannot download {repo_id}@{revision} from the Hugging Face hub ({_reason(e)}); "
                             "check the network (or HF_ENDPOINT, proxy settings) and run it again: "
                             "downloads resume.") from e
