"""Checkpoints are never unpickled, and every load failure is one clear line naming the file."""

import json
import pickle
import shutil

import pytest

from unipixel_cli.model.loading import ModelLoadError, load_unipixel

from .helpers import cli


class LeavesAMark:
    """Unpickling this creates a file: proof that someone unpickled it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture()
def ckpt(conformance_dir, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(conformance_dir / "tiny-unipixel", dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def write_pickle(path, marker):
    path.write_bytes(pickle.dumps({"model.embed_tokens.weight": LeavesAMark(marker)}))


def test_index_pointing_at_a_pickle_is_refused_before_anything_unpickles_it(ckpt, tmp_path):
    marker = tmp_path / "unpickled"
    (ckpt / "model.safetensors").rename(ckpt / "model-00001-of-00001.safetensors")
    write_pickle(ckpt / "pytorch_model.bin", marker)
    (ckpt / "pytorch_model.bin").rename(ckpt / "weights.data")  # not a pickle suffix: only the index names it
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "weights.data",
                                            "lm_head.weight": "model-00001-of-00001.safetensors"}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"model\.safetensors\.index\.json: refers to 'weights\.data'"):
        load_unipixel(ckpt, device="cpu", dtype="fp32")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "sam2.pth"])
def test_pickle_file_in_the_checkpoint_folder_is_refused(ckpt, tmp_path, name):
    marker = tmp_path / "unpickled"
    write_pickle(ckpt / name, marker)
    with pytest.raises(ModelLoadError, match=f"{name}: pickle weight files are refused"):
        load_unipixel(ckpt, device="cpu", dtype="fp32")
    assert not marker.exists()


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("name, damage, expected", [
    ("model.safetensors", truncate, "not a valid safetensors file"),
    ("model.safetensors", lambda p: p.write_bytes(b"garbage" * 100), "not a valid safetensors file"),
    ("model.safetensors", lambda p: p.write_bytes(b""), "not a valid safetensors file"),
    ("config.json", lambda p: p.write_text('{"model_type": "pixel_qwen2_5_vl",'), "invalid JSON"),
    ("config.json", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "hidden_size": "64"})),
     "hidden_size must be an integer"),
    ("config.json", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "sam2_config": "nope"})),
     "cannot build SAM 2"),
    ("tokenizer.json", lambda p: p.write_text("{not json"), "invalid JSON"),
    ("tokenizer.json", lambda p: p.write_text(json.dumps({"model": {"type": "Nonsense"}})),
     "cannot load the tokenizer"),
])
def test_damaged_files_are_one_clear_error_naming_the_file(ckpt, name, damage, expected):
    damage(ckpt / name)
    with pytest.raises(ModelLoadError) as info:
        load_unipixel(ckpt, device="cpu", dtype="fp32")
    message = str(info.value)
    assert str(ckpt / name) in message and expected in message and "\n" not in message


def test_cli_load_error_is_one_line_exit_1(ckpt, tmp_path, conformance_dir):
    write_pickle(ckpt / "pytorch_model.bin", tmp_path / "unpickled")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": str(conformance_dir / "media" / "image.png"), "prompt": "x"}))
    r = cli("segment", manifest, "-o", tmp_path / "out", "--model", ckpt, "--device", "cpu")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "pytorch_model.bin" in errors[0]


def test_trainer_arguments_next_to_the_weights_do_not_block_loading(ckpt, tmp_path):
    write_pickle(ckpt / "training_args.bin", tmp_path / "unpickled")
    model, _ = load_unipixel(ckpt, device="cpu", dtype="fp32")
    assert model is not None and not (tmp_path / "unpickled").exists()
