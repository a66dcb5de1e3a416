"""`batch_invariant`: a row's bf16 output does not depend on the rows batched with it."""

from __future__ import annotations

import json
import random

import pytest

from unipixel_cli.engine import Engine, EngineOptions
from unipixel_cli.manifest import load_manifest
from unipixel_cli.model.loading import load_unipixel
from unipixel_cli.output import rle_decode

from .conformance_harness import fixture_dirs, load_cases

pytestmark = pytest.mark.slow


def _manifest(conformance_dir, path):
    rows = []
    for folder in fixture_dirs(conformance_dir):
        for c in load_cases(folder):
            if "visual_prompts" in c or "user_mask" in c or c["media_type"] == "image_rgba":
                continue
            key = {"video": "video", "image": "image", "frame_folder": "frames"}[c["media_type"]]
            rows.append({"id": f"{folder.name}-{c['id']}", key: str((folder / c["media"]).resolve()),
                         "prompt": c.get("prompt") or c["question"], "sample_frames": c["sample_frames"],
                         "max_new_tokens": c["max_new_tokens"]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_bf16_rows_do_not_depend_on_their_batch(conformance_dir, tmp_path):
    model, proc = load_unipixel(conformance_dir / "tiny-unipixel", device="cpu", dtype="bf16")
    rows, errors = load_manifest(_manifest(conformance_dir, tmp_path / "m.jsonl"), "segment")
    assert not errors and len(rows) >= 3
    alone = {r["id"]: r for r in Engine(model, proc, EngineOptions(batch_size=1, batch_invariant=True))(rows)}
    shuffled = list(rows)
    random.Random(1).shuffle(shuffled)
    together = {r["id"]: r for r in Engine(model, proc, EngineOptions(batch_size=8, batch_invariant=True))(shuffled)}
    for rid, a in alone.items():
        b = together[rid]
        assert a["status"] == b["status"] == "ok" and a["raw_answer"] == b["raw_answer"], rid
        for oa, ob in zip(a["objects"], b["objects"], strict=True):
            for ma, mb in zip(oa["masks"], ob["masks"], strict=True):
                assert (rle_decode(ma) == rle_decode(mb)).all(), rid
            assert oa["score"] == ob["score"]
