"""Input handling that decides what the model sees (issue 14 review findings)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from unipixel_cli.model.loading import ModelLoadError, load_unipixel
from unipixel_cli.model.memory import ObjectMemoryBank
from unipixel_cli.model.preprocess import force_prompt_frames


def test_prompt_frames_never_evict_each_other():
    # two prompts nearest to the same sampled index: both frames must be sampled
    assert force_prompt_frames([0, 4, 8], [5, 6]) == [0, 5, 6]
    assert set(force_prompt_frames([0, 10, 20, 30], [11, 12, 13])) >= {11, 12, 13}
    # more prompt frames than samples: every prompt frame is kept
    assert force_prompt_frames([0, 10], [1, 2, 3]) == [1, 2, 3]
    # a single prompt frame replaces the nearest sample, as the authors do
    assert force_prompt_frames([0, 2, 4, 6, 9, 11, 13, 15], [5]) == [0, 2, 5, 6, 9, 11, 13, 15]


def test_memory_prompt_lists_objects_in_order_of_first_mention():
    bank = ObjectMemoryBank(2, 28, 28, mention_order=[1, 0])
    track = torch.ones(2, 28, 28, dtype=torch.bool)
    bank.prefill(0, track)
    bank.prefill(1, track)
    prefix = bank.prefix((28, 28), is_image=False)
    assert prefix.index("[1]:") < prefix.index("[0]:")
    assert bank.prompt_order() == [1, 0]


def test_pixelqa_engine_orders_memory_by_mention(conformance_dir, tmp_path):
    from unipixel_cli.engine import EngineOptions
    from unipixel_cli.manifest import load_manifest
    from unipixel_cli.pixelqa import PixelQAEngine

    model, proc = load_unipixel(conformance_dir / "tiny-unipixel", device="cpu", dtype="fp32")
    row = {"id": "q", "video": str(conformance_dir / "media" / "video.mp4"),
           "question": "Is [1] left of [0]?",
           "objects": [{"id": 0, "frame": 5, "point": [63, 52]}, {"id": 1, "frame": 5, "box": [84, 33, 108, 58]}]}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(row) + "\n")
    rows, errors = load_manifest(manifest, "pixelqa")
    assert not errors
    prepared = PixelQAEngine(model, proc, EngineOptions(sample_frames=8)).prepare(rows[0])
    assert prepared.bank.mention_order == [1, 0]


@pytest.fixture()
def checkpoint_copy(conformance_dir, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(conformance_dir / "tiny-unipixel", dst)
    return dst


def test_untied_checkpoint_without_lm_head_is_a_load_error(checkpoint_copy):
    cfg = json.loads((checkpoint_copy / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (checkpoint_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="lm_head.weight"):
        load_unipixel(checkpoint_copy, device="cpu", dtype="fp32")


def test_unexpected_tensor_is_a_load_error(checkpoint_copy):
    weights = load_file(checkpoint_copy / "model.safetensors")
    weights["model.layers.0.extra_gate.weight"] = torch.zeros(2, 2)
    save_file(weights, checkpoint_copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="extra_gate"):
        load_unipixel(checkpoint_copy, device="cpu", dtype="fp32")


def test_missing_head_tensor_is_a_load_error(checkpoint_copy):
    weights = load_file(checkpoint_copy / "model.safetensors")
    del weights["tem_proj.bias"]
    save_file(weights, checkpoint_copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="tem_proj.bias"):
        load_unipixel(checkpoint_copy, device="cpu", dtype="fp32")


def test_rgba_image_llm_over_white_sam2_alpha_dropped(tmp_path):
    from PIL import Image

    from unipixel_cli.media import open_media

    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[:, :3, 3] = 0  # transparent, colour kept underneath
    rgba[:, 3:, 3] = 255
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    for media in (open_media(path), open_media(_frame_folder(tmp_path, path))):
        assert media.has_alpha
        llm, sam = media.read_views([0])
        assert (sam[0] == (10, 200, 30)).all()  # SAM 2: alpha dropped
        assert (llm[0, :, :3] == 255).all() and (llm[0, :, 3:] == (10, 200, 30)).all()  # LLM: over white


def _frame_folder(tmp_path, image):
    folder = tmp_path / "frames"
    folder.mkdir()
    shutil.copy(image, folder / "00000.png")
    shutil.copy(image, folder / "00001.png")
    return folder


def test_engine_sends_rgba_views_like_the_authors(conformance_dir, tmp_path):
    """The engine path (not only the conformance harness) reproduces the RGBA golden case."""
    from unipixel_cli.engine import Engine, EngineOptions
    from unipixel_cli.manifest import load_manifest

    more = conformance_dir / "more"
    case = next((c for c in _cases(more) if c.get("media_type") == "image_rgba"), None)
    if case is None:
        pytest.skip("fixture has no RGBA image case")
    golden = next(c for c in json.loads((more / "golden.json").read_text())["cases"] if c["case_id"] == case["id"])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "rgba", "image": str((more / case["media"]).resolve()),
                                    "prompt": case["prompt"], "sample_frames": case["sample_frames"],
                                    "max_new_tokens": case["max_new_tokens"]}) + "\n")
    rows, errors = load_manifest(manifest, "segment")
    assert not errors
    model, proc = load_unipixel(conformance_dir / "tiny-unipixel", device="cpu", dtype="fp32")
    (row,) = list(Engine(model, proc, EngineOptions())(rows))
    call = golden["calls"][0]
    assert row["status"] == "ok" and row["raw_answer"].startswith(call["response"])
    from pycocotools import mask as mask_utils

    from unipixel_cli.output import rle_decode
    for obj, gm in zip(row["objects"], call["masks"], strict=True):
        ours, theirs = rle_decode(obj["masks"][0]), mask_utils.decode(gm["frames"][0]["rle"]).astype(bool)
        assert (ours & theirs).sum() / max(1, (ours | theirs).sum()) >= 0.98


def _cases(folder):
    return [json.loads(line) for line in (folder / "cases.jsonl").read_text().splitlines() if line.strip()]
