"""Input handling that decides what the model sees (issue 14 review findings)."""

from __future__ import annotations

import json
import shutil

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
