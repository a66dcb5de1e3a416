"""Benchmark requests through the real engine on the tiny conformance checkpoint: the manifest
keys benchmarks need (frame_indices, pixel budget, sample_fps, answer_prefix) and one tiny
end-to-end `unipixel bench refcoco` run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import cli
from unipixel_cli.engine import Engine, EngineOptions
from unipixel_cli.manifest import ManifestRow, SegmentRow


def test_segment_row_with_benchmark_keys(fixture_model, conformance_dir: Path):
    model, processor = fixture_model
    video = conformance_dir / "media" / "video.mp4"  # 16 frames of 160x120
    row = SegmentRow(video=str(video), prompt="Which option?", frame_indices=[1, 4, 6, 9], min_pixels=100 * 784,
                     max_pixels=144 * 784, sample_fps=0.8, answer_prefix="Best Option: (", max_new_tokens=3)
    engine = Engine(model, processor, EngineOptions())
    p = engine.prepare(ManifestRow(1, "q", row, video))
    assert p.llm_indices == [1, 4, 6, 9]
    # smart_resize(120, 160): 112x168 is under 100·28·28, so scale by sqrt(78400/19200) and round
    # up to 28: 252x336 (≤ 144·28·28) → 18x24 patches; 4 frames → 2 temporal patches
    assert p.request.grid_thw == (2, 18, 24)
    text = processor.tokenizer.decode(p.request.input_ids)
    assert text.endswith("<|im_start|>assistant\nBest Option: (")
    # 0.8 fps → 2.5 s per temporal patch; tokens_per_second 2 → time ids 0 and floor(1·2.5·2) = 5
    assert p.request.second_per_grid == pytest.approx(2.5)
    pos = model.position_ids(p.request)
    video_pos = pos[0][[i for i, t in enumerate(p.request.input_ids) if t == processor.tokens.video]]
    start = int(video_pos.min())
    assert sorted(set(video_pos.tolist())) == [start, start + 5]
    (out,) = engine([ManifestRow(1, "q", row, video)])
    assert out["status"] == "ok" and out["answer"].startswith("Best Option: (")
    assert not out["raw_answer"].startswith("Best Option")  # what the authors' evaluator parses
    # without the keys: uniform 16 frames and the training budget (10x14 → 280x392 → 20x28)
    plain = engine.prepare(ManifestRow(2, "p", SegmentRow(video=str(video), prompt="Which?"), video))
    assert plain.request.grid_thw == (8, 20, 28) and plain.request.second_per_grid == 1.0


def test_manifest_rejects_bad_frame_indices():
    with pytest.raises(ValueError, match="frame_indices"):
        SegmentRow(video="v.mp4", prompt="x", frame_indices=[1, 1])
    with pytest.raises(ValueError, match="frame_indices"):
        SegmentRow(video="v.mp4", prompt="x", frame_indices=[-1, 2])


def test_bench_refcoco_end_to_end_on_the_tiny_checkpoint(conformance_dir: Path, tmp_path: Path):
    import pickle

    root = tmp_path / "refer_seg"
    images = root / "images/mscoco/images/train2014"
    images.mkdir(parents=True)
    Image.open(conformance_dir / "media" / "image.png").convert("RGB").save(images / "COCO_1.jpg")
    w, h = Image.open(images / "COCO_1.jpg").size
    (root / "refcoco").mkdir()
    (root / "refcoco" / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "COCO_1.jpg", "height": h, "width": w}],
        "annotations": [{"id": 5, "image_id": 1, "bbox": [10, 10, 40, 30], "category_id": 1,
                         "segmentation": [[10, 10, 50, 10, 50, 40, 10, 40]]}]}))
    with open(root / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump([{"ref_id": 1, "ann_id": 5, "image_id": 1, "split": "val",
                      "sentences": [{"sent_id": 7, "sent": "The red square."}]}], f)
    r = cli("bench", "refcoco", "--data", root, "-o", tmp_path / "out", "--model", conformance_dir / "tiny-unipixel",
            "--device", "cpu")
    assert r.returncode == 0, r.stderr
    manifest = (tmp_path / "out" / "refcoco_val_manifest.jsonl").read_text().splitlines()
    assert json.loads(manifest[0])["prompt"] == "Please segment the red square in this image."
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {k: summary["items"][k] for k in ("total", "scored", "failed", "failures")} == {
        "total": 1, "scored": 1, "failed": 0, "failures": []}
    assert 0 <= summary["CIoU"] <= 100 and summary["Cum Union"] > 0  # random weights: any mask


def test_pixelqa_row_accepts_a_mask_track_but_no_other_repeats():
    from unipixel_cli.manifest import PixelQARow

    rle = {"size": [4, 4], "counts": "04"}
    base = {"video": "v.mp4", "question": "What is [0] doing?"}
    track = [{"id": 0, "frame": 1, "mask": rle}, {"id": 0, "frame": 5, "mask": rle}]
    assert len(PixelQARow.model_validate({**base, "objects": track}).objects) == 2
    for bad in ([{"id": 0, "frame": 1, "mask": rle}, {"id": 0, "frame": 1, "mask": rle}],
                [{"id": 0, "frame": 1, "point": [1, 1]}, {"id": 0, "frame": 5, "mask": rle}]):
        with pytest.raises(ValueError, match="ids repeat"):
            PixelQARow.model_validate({**base, "objects": bad})


def test_pixelqa_engine_with_frame_indices_and_a_mask_track(fixture_model, conformance_dir: Path):
    import numpy as np

    from unipixel_cli.manifest import PixelQARow
    from unipixel_cli.output import rle_encode
    from unipixel_cli.pixelqa import PixelQAEngine

    model, processor = fixture_model
    video = conformance_dir / "media" / "video.mp4"  # 16 frames of 160x120
    m = np.zeros((120, 160), bool)
    m[20:60, 30:90] = True
    row = PixelQARow(video=str(video), question="What is [0] doing?", options=["(A) Sitting", "(B) Running"],
                     objects=[{"id": 0, "frame": f, "mask": rle_encode(m)} for f in (2, 9)],
                     frame_indices=[2, 5, 9, 12], min_pixels=100 * 784, max_pixels=144 * 784 * 4, max_new_tokens=3)
    engine = PixelQAEngine(model, processor, EngineOptions())
    p = engine.prepare(ManifestRow(1, "q", row, video))
    assert p.llm_indices == [2, 5, 9, 12]
    assert p.grid == (2, 18, 24)  # 252x336, as in the segment case above (same budget floor)
    track = p.bank.lookup(0)
    assert [bool(track[t].any()) for t in range(4)] == [True, False, True, False]
    # one <|mem|> per frame pair holding the object: pairs (1,2) and (3,4)
    assert p.bank.prefix(p.llm_size, False).endswith("[0]: <1>-<2> <|mem|> <3>-<4> <|mem|>\n")
    (out,) = engine([ManifestRow(1, "q", row, video)])
    assert out["status"] == "ok" and out["answer"].startswith("The best option is (")
    assert [o["source"] for o in out["objects"]] == ["mask"] and list(out["frame_indices"]) == [2, 5, 9, 12]


def test_bench_help_lists_the_image_and_qa_benchmarks():
    r = cli("bench", "--help")
    assert r.returncode == 0
    for name in ("refcoco", "refcoco+", "refcocog", "reasonseg", "videorefer-q", "pixelqa", "mvbench"):
        assert f" {name} " in r.stdout, name
