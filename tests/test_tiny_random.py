"""`--model tiny-random` shows the tool working on examples/: short `<|seg|>` answers and masks on the
synthetic shapes (ground truth from the generator's geometry), PixelQA masks and a choice; the build
is deterministic."""

import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from unipixel_cli.output import read_results
from unipixel_cli.synthetic import SHAPE_SIZE, example_tracks

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# Which shape each example row is about, read off the generator (synthetic.shape_tracks with the
# seeds make_examples uses): the shape the prompt names, and where the clip has none (v1, v2 have no
# ball, f0 no box) the one nearest the centre of frame 0 (the yellow triangle in all three).
SEGMENT_TARGETS = {"v0": "ball", "v1": "triangle", "v2": "triangle", "f0": "triangle", "i0": "triangle"}
PIXELQA_OBJECTS = [("q0", 0), ("q1", 0), ("q2", 0), ("q_img", 0), ("q_img", 1)]
# A mask on the right shape but shifted by a third of its 24-px size still overlaps it by
# IoU (16/24)/(32/24) = 0.5 along one axis; a mask on the other shape or the background scores ~0.
MIN_IOU = 0.5


def run_cli(env: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unipixel_cli", *map(str, args)], capture_output=True,
                          text=True, timeout=1800, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"})


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """Build tiny-random once (in a private cache) and run the README's smoke commands on examples/."""
    from unipixel_cli.model.tiny import tiny_random_path

    cache = tmp_path_factory.mktemp("unipixel-cache")
    out = tmp_path_factory.mktemp("smoke")
    env = {"UNIPIXEL_CACHE": str(cache)}
    t0 = time.perf_counter()
    with mock.patch.dict(os.environ, env):
        ckpt = tiny_random_path(0)
    build_s = time.perf_counter() - t0
    seg = run_cli(env, "segment", EXAMPLES / "videos.jsonl", "-o", out / "seg", "--model", "tiny-random")
    qa = run_cli(env, "pixelqa", "--prompts", EXAMPLES / "prompts.jsonl", "-o", out / "qa", "--model", "tiny-random")
    assert seg.returncode == 0, seg.stderr[-3000:]
    assert qa.returncode == 0, qa.stderr[-3000:]
    print(f"tiny-random built in {build_s:.1f}s at {ckpt}")
    return {"ckpt": ckpt, "segment": read_results(out / "seg", decode_masks=True),
            "pixelqa": read_results(out / "qa", decode_masks=True)}


def shape_masks(media: str, kind: str, frames: list[int], height: int, width: int) -> np.ndarray:
    track = next(t for t in example_tracks(media) if t.kind == kind)
    return track.masks(height, width)[frames]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


pytestmark = pytest.mark.slow  # builds tiny-random (once per session) and runs the CLI on examples/


def test_tiny_random_is_cached_where_asked(smoke):
    assert smoke["ckpt"].parent.name.startswith("unipixel-cache")
    assert "fitted on the synthetic examples" in (smoke["ckpt"] / "README.md").read_text()


def test_segment_rows_answer_briefly_with_seg_and_mask_the_shape(smoke):
    df = smoke["segment"].set_index("id")
    assert sorted(df.index) == sorted(SEGMENT_TARGETS)
    for row_id, kind in SEGMENT_TARGETS.items():
        row = df.loc[row_id]
        assert row["status"] == "ok", row["error"]
        assert "<|seg|>" in row["raw_answer"] and len(row["raw_answer"]) < 60, row["raw_answer"]
        assert len(row["objects"]) == 1
        masks = row["mask_arrays"][0]
        frames = list(row["frame_indices"])
        area = masks.reshape(len(frames), -1).sum(1)
        shape_area = SHAPE_SIZE * SHAPE_SIZE
        # visible on every frame, never the whole frame: at most a few shapes' worth of pixels
        assert (area > 0).all() and (area < 4 * shape_area).all(), (row_id, area)
        truth = shape_masks(row["media"], kind, frames, row["height"], row["width"])
        ious = [iou(m, t) for m, t in zip(masks, truth)]
        assert np.mean(ious) >= MIN_IOU, (row_id, kind, np.round(ious, 2))


def test_pixelqa_objects_get_visible_masks_and_options_get_a_choice(smoke):
    """Every referred object gets a visible mask on every frame. (Which shape it lands on is not
    asserted: the briefly fitted model tells objects apart by the image, not by the prompt, so
    q_img's two objects, on one image, get one mask; see the README.)"""
    df = smoke["pixelqa"].set_index("id")
    assert sorted(df.index) == sorted({row_id for row_id, _ in PIXELQA_OBJECTS})
    for row_id, obj_id in PIXELQA_OBJECTS:
        row = df.loc[row_id]
        assert row["status"] == "ok", row["error"]
        k = [o["object_id"] for o in row["objects"]].index(obj_id)
        area = row["mask_arrays"][k].reshape(len(row["frame_indices"]), -1).sum(1)
        assert (area > 0).all() and (area < 4 * SHAPE_SIZE * SHAPE_SIZE).all(), (row_id, obj_id, area)
        assert 0 < len(row["answer"]) < 60 and "\n" not in row["answer"], row["answer"]
    assert df.loc["q_img", "choice"] in ("A", "B")
    assert df.loc["q_img", "answer"].startswith("The best option is (" + df.loc["q_img", "choice"])


def test_tiny_random_build_is_deterministic(tmp_path):
    """Two builds of the same recipe (shortened: the same code path, fewer steps) are identical."""
    from safetensors.torch import load_file

    from unipixel_cli.model.tiny import make_tiny_checkpoint, make_tiny_random
    from unipixel_cli.weights import tiny_recipe

    recipe = tiny_recipe()
    recipe["fit"].update(lm_steps=5, sam_steps=2, sam_frames=2)
    a = load_file(make_tiny_random(tmp_path / "a", 0, recipe) / "model.safetensors")
    b = load_file(make_tiny_random(tmp_path / "b", 0, recipe) / "model.safetensors")
    random = load_file(make_tiny_checkpoint(tmp_path / "c", 0, recipe) / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(a[k].equal(b[k]) for k in a)
    assert not all(a[k].equal(random[k]) for k in a)  # the fit did change the weights
