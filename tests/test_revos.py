"""ReVOS: prompts, the authors' metric quirks on a hand-computed mini set, `--preds`, end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from unipixel_cli.bench.revos import evaluate, load_expressions, revos_prompt, summarize
from unipixel_cli.bench.revos_metrics import boundary_f, robustness
from unipixel_cli.output import rle_encode

H = W = 8


def square(r0, r1, c0, c1):
    m = np.zeros((H, W), bool)
    m[r0:r1 + 1, c0:c1 + 1] = True
    return m


A1_F0 = square(2, 4, 2, 4)              # 9 px
A2_F0 = square(3, 5, 3, 5)              # 9 px, overlaps A1 on 4 px
A2_F1 = square(0, 1, 0, 1)              # 4 px
FP_F1 = square(6, 7, 6, 7)              # a false positive


@pytest.fixture
def mini_revos(tmp_path):
    data = tmp_path / "revos"
    videos = {"cat/vid 1": 2, "dog_2": 2}
    for v, n in videos.items():
        (data / "JPEGImages" / v).mkdir(parents=True)
        for t in range(n):
            Image.fromarray(np.full((H, W, 3), 40 * t, np.uint8)).save(data / "JPEGImages" / v / f"{t:05d}.jpg")
    meta = {"videos": {
        "cat/vid 1": {"frames": ["00000", "00001"], "expressions": {
            "0": {"exp": "The red cat.", "obj_id": 0, "anno_id": [1], "type_id": 0},
            "1": {"exp": "Which animals are playing?", "obj_id": 1, "anno_id": [1, 2], "type_id": 1},
            "2": {"exp": "a unicorn", "obj_id": 2, "anno_id": [], "type_id": 0},
            "3": {"exp": "what is missing?", "obj_id": 3, "anno_id": [2], "type_id": 1}}},
        "dog_2": {"frames": ["00000", "00001"], "expressions": {
            "0": {"exp": "an old dog", "obj_id": 0, "anno_id": [3], "type_id": 1}}}}}
    (data / "meta_expressions_valid_.json").write_text(json.dumps(meta))
    masks = {"1": [rle_encode(A1_F0), None], "2": [rle_encode(A2_F0), rle_encode(A2_F1)],
             "3": [rle_encode(square(0, 3, 0, 3)), rle_encode(square(0, 3, 0, 3))]}
    (data / "mask_dict.json").write_text(json.dumps(masks))
    fg = {"cat/vid 1": {"masks_rle": [rle_encode(A1_F0 | A2_F0), rle_encode(A2_F1)]},
          "dog_2": {"masks_rle": [[rle_encode(square(0, 3, 0, 3))], [rle_encode(square(0, 3, 0, 3))]]}}
    (data / "mask_dict_foreground.json").write_text(json.dumps(fg))
    return data


def write_preds(root, video, exp, frames):
    folder = root / video / exp
    folder.mkdir(parents=True, exist_ok=True)
    for t, m in enumerate(frames):
        if m is not None:
            Image.fromarray(m.astype(np.uint8) * 255, mode="L").save(folder / f"{t:05d}.png")


@pytest.mark.parametrize("exp, n, expected", [
    ("The red cat.", 9, "Please segment the red cat in this video."),
    ("  a dog running.  ", 9, "Please segment the dog running in this video."),
    ("An apple", 1, "Please segment the apple in this image."),
    ("the a thing", 9, "Please segment the thing in this video."),   # each prefix removed once, in order
    ("Which one is fastest?", 9, "Which one is fastest? Please provide the segmentation mask."),
])
def test_prompts_follow_the_authors(exp, n, expected):
    assert revos_prompt(exp, n) == expected


def test_metric_quirks_on_hand_computed_mini_set(mini_revos, tmp_path):
    preds = tmp_path / "preds"
    write_preds(preds, "cat/vid 1", "0", [A1_F0, np.zeros((H, W), bool)])       # perfect
    write_preds(preds, "cat/vid 1", "1", [A1_F0 | A2_F0, np.zeros((H, W), bool)])  # misses frame 1
    write_preds(preds, "cat/vid 1", "2", [np.zeros((H, W), bool), FP_F1])        # absent target, 1 FP
    write_preds(preds, "cat/vid 1", "3", [A2_F0, None])                          # a frame missing → 0
    # dog_2: no prediction folder at all → 0
    rows = evaluate(mini_revos, preds, load_expressions(mini_revos), workers=2)
    got = {r["videxp"]: (r["J"], r["F"], r["JF"], r["A"], r["R"]) for r in rows}
    # perfect with 0/255 PNGs: A = (55/64 + 1) / 2 = 92.97, not 100
    assert got["cat/vid 1_0"] == (100.0, 100.0, 100.0, 92.97, 100.0)
    # overlap sums to 2: A counts it as wrong; R: (1-2)*255 wraps to 1 per overlap pixel → 1 - 4/14
    assert got["cat/vid 1_1"] == (50.0, 50.0, 50.0, 85.94, 85.71)
    # absent target: empty frame scores J = F = 1, FP frame 0; R = max(0, 1 - 4·255/4) = 0
    assert got["cat/vid 1_2"] == (50.0, 50.0, 50.0, 96.88, 50.0)
    assert got["cat/vid 1_3"] == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert got["dog_2_0"] == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert [r["videxp"] for r in rows] == ["cat/vid 1_0", "cat/vid 1_1", "cat/vid 1_2", "cat/vid 1_3", "dog_2_0"]
    s = summarize(rows)
    assert s["referring"]["J"] == pytest.approx(75.0) and s["referring"]["A"] == pytest.approx((92.97 + 96.88) / 2)
    assert s["reason"]["J"] == pytest.approx(50 / 3) and s["reason"]["R"] == pytest.approx(85.71 / 3)
    assert s["overall"]["JF"] == pytest.approx((75.0 + 50 / 3) / 2)
    again = evaluate(mini_revos, preds, load_expressions(mini_revos), workers=1)
    assert again == rows  # same numbers whatever the worker count


def test_boundary_and_robustness_details():
    gt = square(2, 5, 2, 5)
    shifted = square(2, 5, 3, 6)  # one pixel right: within the 1-px tolerance of an 8x8 frame
    assert boundary_f(gt, shifted) == pytest.approx(1.0)
    assert boundary_f(gt, np.zeros_like(gt)) == 0.0
    assert boundary_f(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    g = np.array([[2, 0]], np.uint8)
    p = np.array([[255, 255]], np.uint8)
    fg = np.array([[1, 0]], np.uint8)
    # neg = (1-2)*255 mod 256 + (1-0)*255 = 1 + 255 = 256 → R = max(0, 1 - 256/1) = 0
    assert robustness(g, p, fg) == 0.0


def test_preds_cli_perfect_and_empty(mini_revos, tmp_path):
    perfect, empty = tmp_path / "perfect", tmp_path / "empty"
    gts = {"0": [A1_F0, np.zeros((H, W), bool)], "1": [A1_F0 | A2_F0, A2_F1], "2": [np.zeros((H, W), bool)] * 2,
           "3": [A2_F0, A2_F1]}
    for exp, frames in gts.items():
        write_preds(perfect, "cat/vid 1", exp, frames)
        write_preds(empty, "cat/vid 1", exp, [np.zeros((H, W), bool)] * 2)
    write_preds(perfect, "dog_2", "0", [square(0, 3, 0, 3)] * 2)
    write_preds(empty, "dog_2", "0", [np.zeros((H, W), bool)] * 2)
    for preds in (perfect, empty):
        r = subprocess.run([sys.executable, "-m", "unipixel_cli", "bench", "revos", "--data", str(mini_revos),
                            "--preds", str(preds), "-o", str(preds / "eval")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    best = json.loads((perfect / "eval" / "revos_valid.json").read_text())
    worst = json.loads((empty / "eval" / "revos_valid.json").read_text())
    assert best["overall"]["J"] == pytest.approx(100.0) and best["overall"]["F"] == pytest.approx(100.0)
    assert best["overall"]["A"] < 100.0  # 0/255 PNGs never match the 0/1 ground truth
    assert worst["overall"]["J"] < best["overall"]["J"]
    header = (perfect / "eval" / "revos_valid.csv").read_text().splitlines()[0]
    assert header == "video_name,exp_id,exp,videxp,J,F,JF,A,R,type_id"


@pytest.mark.slow
def test_bench_revos_end_to_end_with_tiny_checkpoint(mini_revos, tmp_path, conformance_dir):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "unipixel_cli", "bench", "revos", "--data", str(mini_revos), "-o", str(out),
            "--model", str(conformance_dir / "tiny-unipixel"), "--max-new-tokens", "12", "--workers", "1"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "revos_valid.json").read_text())
    assert set(summary) == {"referring", "reason", "overall"}
    pngs = sorted((out / "preds").rglob("*.png"))
    assert len(pngs) == 5 * 2
    assert Image.open(pngs[0]).size == (W, H)
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600)  # resumes: nothing to redo
    assert rerun.returncode == 0 and "0 rows to run" in rerun.stderr
