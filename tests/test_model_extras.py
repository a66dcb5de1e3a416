"""Tiny random checkpoints, bf16 path, loading errors."""

import json

import pytest
import torch

from unipixel_cli.model.loading import ModelLoadError, load_unipixel, sam2_config_name
from unipixel_cli.model.tiny import make_tiny_checkpoint
from unipixel_cli.output import read_results
from unipixel_cli.weights import resolve_model

from .helpers import cli


def test_tiny_checkpoint_is_seeded_and_loads_in_official_layout(tmp_path):
    a = make_tiny_checkpoint(tmp_path / "a", seed=3)
    b = make_tiny_checkpoint(tmp_path / "b", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["model_type"] == "pixel_qwen2_5_vl" and "text_config" not in cfg
    from safetensors import safe_open
    with safe_open(str(a / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.self_attn.q_proj.weight" in keys and "visual.merger.mlp.0.weight" in keys
    assert "sam2.memory_encoder.fuser.layers.0.weight" in keys and "seg_head.1.weight" in keys
    assert "lm_head.weight" not in keys  # tied, as in the published config
    model, proc = load_unipixel(a, device="cpu", dtype="fp32")
    assert model.llm.lm_head.weight.data_ptr() == model.text_model.embed_tokens.weight.data_ptr()
    assert proc.tokenizer.convert_tokens_to_ids("<|seg|>") == cfg["seg_token_id"]


@pytest.mark.slow
def test_segment_runs_on_a_tiny_random_checkpoint(tmp_path, conformance_dir):
    ckpt = make_tiny_checkpoint(tmp_path / "tiny", seed=0)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "x", "video": str(conformance_dir / "media" / "video.mp4"),
                                    "prompt": "Please segment the ball.", "max_new_tokens": 6}))
    r = cli("segment", manifest, "-o", tmp_path / "out", "--model", ckpt)
    assert r.returncode == 0, r.stderr
    row = read_results(tmp_path / "out").iloc[0]
    assert row["status"] == "ok" and len(row["frame_indices"]) == 16


@pytest.mark.slow
def test_bf16_cli_path_keeps_the_authors_bf16_answers(tmp_path, conformance_dir):
    """`--dtype bf16` end to end through the batched engine: the answers of the authors' bf16 run."""
    gfile = conformance_dir / "bf16" / "golden.json"
    gfile = gfile if gfile.exists() else conformance_dir / "golden.json"
    golden = {c["case_id"]: c for c in json.loads(gfile.read_text())["cases"]}
    cases = [json.loads(x) for x in (conformance_dir / "cases.jsonl").read_text().splitlines() if x.strip()]
    rows = []
    for c in cases:
        if "visual_prompts" in c or "user_mask" in c:
            continue
        key = {"video": "video", "image": "image", "frame_folder": "frames"}[c["media_type"]]
        rows.append({"id": c["id"], key: str(conformance_dir / c["media"]), "prompt": c.get("prompt") or c["question"],
                     "sample_frames": c["sample_frames"], "max_new_tokens": c["max_new_tokens"]})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    r = cli("segment", manifest, "-o", tmp_path / "out", "--model", conformance_dir / "tiny-unipixel",
            "--dtype", "bf16", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    df = read_results(tmp_path / "out").set_index("id")
    for row in rows:
        call = golden[row["id"]]["calls"][0]
        assert df.loc[row["id"], "raw_answer"] == call["response"]
        assert len(df.loc[row["id"], "objects"]) == len(call["masks"])


def test_loading_errors_are_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_unipixel(tmp_path, device="cpu")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match="expected 'pixel_qwen2_5_vl'"):
        load_unipixel(tmp_path, device="cpu")
    with pytest.raises(ModelLoadError, match="neither a directory"):
        resolve_model("no-such-model")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            from unipixel_cli.model.loading import resolve_device
            resolve_device("cuda:0")


def test_offline_hub_id_not_cached_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache and HF_HUB_OFFLINE is set"):
        resolve_model("unipixel-3b")


def test_published_sam2_config_names_map_to_pypi_configs():
    assert sam2_config_name("configs/sam2.1_hiera_b+") == "configs/sam2.1/sam2.1_hiera_b+.yaml"
    assert sam2_config_name("configs/sam2_hiera_l.yaml") == "configs/sam2/sam2_hiera_l.yaml"


def _shard_checkpoint(src, dst):
    """Copy a checkpoint, splitting its weights into two safetensors shards + index, as on the hub."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    (dst / "model.safetensors").unlink()
    keys = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for name, part in halves.items():
        save_file({k: tensors[k] for k in part}, str(dst / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def test_hub_layout_in_the_hf_cache_loads_offline_by_short_name(tmp_path, monkeypatch, conformance_dir):
    cache = tmp_path / "hub"
    snapshot = cache / "models--PolyU-ChenLab--UniPixel-3B" / "snapshots" / "0123456789abcdef"
    _shard_checkpoint(conformance_dir / "tiny-unipixel", snapshot)
    (cache / "models--PolyU-ChenLab--UniPixel-3B" / "refs").mkdir()
    (cache / "models--PolyU-ChenLab--UniPixel-3B" / "refs" / "main").write_text("0123456789abcdef")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    path = resolve_model("unipixel-3b")
    assert path == snapshot
    sharded, _ = load_unipixel(path, device="cpu", dtype="fp32")
    single, _ = load_unipixel(conformance_dir / "tiny-unipixel", device="cpu", dtype="fp32")
    for (k, a), (_, b) in zip(sorted(sharded.state_dict().items()), sorted(single.state_dict().items())):
        assert torch.equal(a, b), k
