"""The top-level weights/ registry is data the code reads, ships in the wheel, and --revision pins a revision."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from unipixel_cli import weights
from unipixel_cli.model import tiny

from .helpers import cli

ROOT = Path(__file__).resolve().parents[1]
REGISTRY_FILE = ROOT / "weights" / "registry.json"


def registry_data() -> dict:
    return json.loads(REGISTRY_FILE.read_text())


def test_registry_comes_from_the_top_level_weights_folder():
    data = registry_data()
    assert weights.weights_dir() == ROOT / "weights"
    assert {c["name"]: c["repo_id"] for c in data["checkpoints"]} == {
        name: c.repo_id for name, c in weights.known_checkpoints().items()}
    assert weights.default_checkpoint().name == data["default"]
    assert (ROOT / "weights" / "tiny" / "tiny-random.json").is_file()
    assert weights.tiny_recipe()["config"]["sam2_image_size"] == json.loads(
        (ROOT / "weights" / "tiny" / "tiny-random.json").read_text())["config"]["sam2_image_size"]


@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv to build the wheel")
def test_installed_wheel_reads_the_registry_it_ships(tmp_path):
    built = subprocess.run(["uv", "build", "--wheel", "--offline", "-o", str(tmp_path / "dist"), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("*.whl"))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert (site / "unipixel_cli" / "_weights" / "registry.json").is_file()
    assert (site / "unipixel_cli" / "_weights" / "tiny" / "tiny-random.json").is_file()
    probe = ("import json, unipixel_cli.weights as w; "
             "print(json.dumps([str(w.weights_dir()), sorted(w.known_checkpoints())]))")
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the editable checkout on sys.path
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    where, names = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(where) == site / "unipixel_cli" / "_weights"
    assert names == sorted(c["name"] for c in registry_data()["checkpoints"])


def test_registry_revision_is_the_default_and_revision_overrides_it(monkeypatch, tmp_path):
    asked = []
    monkeypatch.setattr(weights, "cached_path", lambda repo, rev: asked.append((repo, rev)) or tmp_path)
    pinned = {c["name"]: (c["repo_id"], c["revision"]) for c in registry_data()["checkpoints"]}

    weights.resolve_model("unipixel-7b")
    weights.resolve_model("PolyU-ChenLab/UniPixel-3B", revision="0123abcd")
    weights.resolve_model(weights.with_revision("unipixel-3b", "v1.0"))
    weights.resolve_model("someone/other-model")
    assert asked == [pinned["unipixel-7b"], ("PolyU-ChenLab/UniPixel-3B", "0123abcd"),
                     (pinned["unipixel-3b"][0], "v1.0"), ("someone/other-model", "main")]


def test_revision_is_refused_for_local_checkpoints(tmp_path):
    with pytest.raises(weights.ModelLoadError, match="--revision"):
        weights.resolve_model(str(tmp_path), revision="abc")


@pytest.mark.parametrize("how", ["option", "env"])
def test_cli_revision_reaches_the_hub_lookup(tmp_path, how, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing is found
    args = ["--revision", "deadbeef"] if how == "option" else []
    if how == "env":
        monkeypatch.setenv("UNIPIXEL_REVISION", "deadbeef")
    r = cli("segment", ROOT / "examples" / "videos.jsonl", "-o", tmp_path / "out",
            "--model", "unipixel-3b", *args)
    assert r.returncode == 1, r.stderr
    assert "PolyU-ChenLab/UniPixel-3B@deadbeef is not in the Hugging Face cache" in " ".join(r.stderr.split())


def test_weights_list_shows_the_registry_revisions():
    r = cli("weights", "list")
    assert r.returncode == 0, r.stderr
    for c in registry_data()["checkpoints"]:
        assert c["repo_id"] in r.stdout and c["revision"] in r.stdout


def test_tiny_cache_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.delenv("UNIPIXEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tiny.cache_root() == tmp_path / "xdg" / "unipixel"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tiny.cache_root() == tmp_path / "home" / ".cache" / "unipixel"
    monkeypatch.setenv("UNIPIXEL_CACHE", str(tmp_path / "mine"))
    assert tiny.cache_root() == tmp_path / "mine"


def test_a_changed_recipe_gets_a_new_cache_entry(monkeypatch, tmp_path):
    monkeypatch.setenv("UNIPIXEL_CACHE", str(tmp_path))
    built = []

    def fake_build(path, seed, recipe):  # records what would be built; the real build is tested elsewhere
        built.append(recipe)
        Path(path).mkdir(parents=True)
        (Path(path) / "model.safetensors").write_bytes(b"x")

    monkeypatch.setattr(tiny, "make_tiny_random", fake_build)
    first = tiny.tiny_random_path(0)
    assert tiny.tiny_random_path(0) == first and len(built) == 1  # cached
    recipe = weights.tiny_recipe()
    recipe["fit"]["lm_steps"] += 1
    monkeypatch.setattr(weights, "tiny_recipe", lambda name="tiny-random": recipe)
    second = tiny.tiny_random_path(0)
    assert second != first and second.parent == first.parent == tmp_path and len(built) == 2
