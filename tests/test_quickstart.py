"""A first run without the weights (no network, no GPU) says what to do next, on one line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from unipixel_cli.model.loading import ModelLoadError
from unipixel_cli.weights import pull, resolve_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMOKE = "`unipixel segment examples/videos.jsonl -o smoke/ --model tiny-random`"


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache and a hub endpoint that refuses connections (fast, offline)."""
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
           "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    monkeypatch.setattr(c, "ENDPOINT", env["HF_ENDPOINT"])
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    return env


def run(*args, env):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("UNIPIXEL_", "HF_"))}
    return subprocess.run([sys.executable, "-m", "unipixel_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**full, **env, "COLUMNS": "80"})


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_model_download_failure_points_to_the_smoke_run(no_hub):
    with pytest.raises(ModelLoadError) as e:
        resolve_model("unipixel-3b")
    msg = str(e.value)
    assert "cannot download PolyU-ChenLab/UniPixel-3B" in msg and "Connection refused" in msg
    assert SMOKE in msg and "\n" not in msg


def test_offline_cache_miss_points_to_the_smoke_run(no_hub, monkeypatch):
    import huggingface_hub.constants as c
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set") as e:
        resolve_model("PolyU-ChenLab/UniPixel-3B")
    assert SMOKE in str(e.value)


def test_weights_pull_failure_does_not_suggest_model_option(no_hub):
    with pytest.raises(ModelLoadError) as e:
        pull("PolyU-ChenLab/UniPixel-3B")
    assert "cannot download PolyU-ChenLab/UniPixel-3B" in str(e.value)
    assert "--model" not in str(e.value) and "tiny-random" not in str(e.value)


def test_segment_without_hub_prints_the_next_step_unwrapped_at_80_columns(no_hub, tmp_path):
    r = run("segment", EXAMPLES / "videos.jsonl", "-o", tmp_path / "results", env=no_hub)
    assert r.returncode == 1, r.stderr
    (line,) = error_lines(r.stderr)
    assert len(line) > 80 and SMOKE in line  # rich used to hard-wrap this at 80 columns
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("name", ["./my-checkpoint", "/models/unipixel", "models/unipixel/3b"])
def test_a_missing_directory_is_not_sent_to_the_hub(no_hub, name):
    with pytest.raises(ModelLoadError, match="no such checkpoint directory"):
        resolve_model(name)
