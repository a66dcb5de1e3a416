"""Video segmentation benchmarks (MeViS, Ref-YouTube-VOS, Ref-DAVIS17, Ref-SAV, GroundMoRe) and the
shared framework: mini datasets in each real layout, prediction sets whose metrics are derived
by hand or by the slow reference implementation at the bottom of this file."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from unipixel_cli.bench.base import BenchDataError, prediction_source, safe_load_pickle, score_items
from unipixel_cli.bench.video import GroundMoRe, MeViS, RefDAVIS17, RefSAV, query_prompt
from unipixel_cli.manifest import load_manifest
from unipixel_cli.media import open_media
from unipixel_cli.output import rle_encode

H = W = 8


def square(r0, r1, c0, c1, h=H, w=W):
    m = np.zeros((h, w), bool)
    m[r0:r1 + 1, c0:c1 + 1] = True
    return m


EMPTY = np.zeros((H, W), bool)
OBJ_A = square(2, 5, 2, 5)      # 16 px
OBJ_A_SHIFT = square(2, 5, 3, 6)  # one column right: 12 px overlap, union 20
OBJ_B = square(0, 1, 6, 7)      # 4 px, disjoint from A


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "unipixel_cli", "bench", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=900)


def write_frames(folder: Path, names, h=H, w=W):
    folder.mkdir(parents=True, exist_ok=True)
    for t, n in enumerate(names):
        Image.fromarray(np.full((h, w, 3), (30 * t) % 256, np.uint8)).save(folder / f"{n}.jpg")


def write_png_preds(root: Path, video: str, exp: str, frames: dict):
    folder = root / video / exp
    folder.mkdir(parents=True, exist_ok=True)
    for name, m in frames.items():
        if m is not None:
            Image.fromarray(m.astype(np.uint8) * 255, mode="L").save(folder / f"{name}.png")


# -- an independent, slow reference of the DAVIS metrics (loops over pixels) -----------------


def ref_boundary(seg: np.ndarray) -> set:
    """Pixels differing from their E, S or SE neighbour (outside the image counts as equal to
    the pixel, except the last row/column rules of seg2bmap which only look E / S)."""
    h, w = seg.shape
    out = set()
    for y in range(h):
        for x in range(w):
            v = bool(seg[y, x])
            if y == h - 1 and x == w - 1:
                continue
            if y == h - 1:
                diff = v != bool(seg[y, x + 1])
            elif x == w - 1:
                diff = v != bool(seg[y + 1, x])
            else:
                diff = v != bool(seg[y, x + 1]) or v != bool(seg[y + 1, x]) or v != bool(seg[y + 1, x + 1])
            if diff:
                out.add((y, x))
    return out


def ref_f(gt: np.ndarray, pred: np.ndarray) -> float:
    r = math.ceil(0.008 * math.hypot(*gt.shape))
    bg, bp = ref_boundary(gt), ref_boundary(pred)
    if not bp and bg:
        return 0.0
    if bp and not bg:
        return 0.0
    if not bp and not bg:
        return 1.0
    near = lambda p, s: any((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 <= r * r for q in s)  # noqa: E731
    precision = sum(near(p, bg) for p in bp) / len(bp)
    recall = sum(near(g, bp) for g in bg) / len(bg)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def ref_j(gt, pred) -> float:
    g, p = gt.astype(bool), pred.astype(bool)
    union = (g | p).sum()
    return 1.0 if union == 0 else (g & p).sum() / union


# -- restricted unpickler -------------------------------------------------------------------


class Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_safe_load_pickle_allows_data_and_refuses_code(tmp_path):
    good = tmp_path / "good.pkl"
    data = {"0": [{"size": [2, 2], "counts": b"04"}, None], "1": [1.5, (1, 2), {3}, True]}
    good.write_bytes(pickle.dumps(data))
    assert safe_load_pickle(good) == data
    for obj in (Boom(), OrderedDict(a=1), np.zeros(2)):
        bad = tmp_path / "bad.pkl"
        bad.write_bytes(pickle.dumps(obj))
        with pytest.raises(BenchDataError, match="bad.pkl: refusing to unpickle"):
            safe_load_pickle(bad)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(BenchDataError, match="junk.pkl: cannot read pickle"):
        safe_load_pickle(tmp_path / "junk.pkl")


# -- explicit frame lists (issue 14 item 4) -------------------------------------------------


def test_frame_files_name_the_frames_and_a_stray_file_cannot_shift_them(tmp_path):
    folder = tmp_path / "v"
    write_frames(folder, ["00000", "00002"])
    # a stray frame that sorts between the real ones in a folder listing
    Image.fromarray(np.full((H, W, 3), 200, np.uint8)).save(folder / "00001.jpg")
    listed = open_media(folder)
    assert listed.num_frames == 3  # what a folder listing sees
    media = open_media(folder, ["00000.jpg", "00002.jpg"])
    assert media.num_frames == 2
    frames = media.read([0, 1])
    assert frames[0].mean() == 0 and abs(frames[1].mean() - 30) <= 2  # JPEG noise, not the stray 200
    with pytest.raises(Exception, match="00009.jpg: file not found"):
        open_media(folder, ["00000.jpg", "00009.jpg"])


def test_frame_files_are_validated_strictly(tmp_path):
    (tmp_path / "v").mkdir()
    rows = [{"id": "ok", "frames": "v", "frame_files": ["a.jpg", "b.jpg"], "prompt": "p"},
            {"id": "up", "frames": "v", "frame_files": ["../a.jpg"], "prompt": "p"},
            {"id": "sub", "frames": "v", "frame_files": ["x/a.jpg"], "prompt": "p"},
            {"id": "rep", "frames": "v", "frame_files": ["a.jpg", "a.jpg"], "prompt": "p"},
            {"id": "empty", "frames": "v", "frame_files": [], "prompt": "p"},
            {"id": "video", "video": "a.mp4", "frame_files": ["a.jpg"], "prompt": "p"},
            {"id": "type", "frames": "v", "frame_files": "a.jpg", "prompt": "p"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    good, bad = load_manifest(manifest, "segment")
    assert [r.id for r in good] == ["ok"] and good[0].row.frame_files == ["a.jpg", "b.jpg"]
    errors = {b.id: b.message for b in bad}
    assert set(errors) == {"up", "sub", "rep", "empty", "video", "type"}
    assert "not a file name" in errors["up"] and "not a file name" in errors["sub"]
    assert "repeat" in errors["rep"] and "needs a 'frames' folder" in errors["video"]
    assert all(m.startswith(f"line {n}:") for n, m in zip(range(2, 8), errors.values()))


def test_revos_requests_list_the_meta_frames_not_the_folder(tmp_path):
    from unipixel_cli.bench.revos import ReVOS

    data = tmp_path / "revos"
    write_frames(data / "JPEGImages" / "v", ["00000", "00005"])
    write_frames(data / "JPEGImages" / "v", ["00003"])  # stray file, not in the meta frames list
    (data / "meta_expressions_valid_.json").write_text(json.dumps({"videos": {"v": {
        "frames": ["00000", "00005"], "expressions": {"0": {"exp": "a cat", "anno_id": [], "type_id": 0}}}}}))
    for name in ("mask_dict.json", "mask_dict_foreground.json"):
        (data / name).write_text("{}")
    [item] = ReVOS(data).load_items()
    assert item.request["frame_files"] == ["00000.jpg", "00005.jpg"]
    assert open_media(item.request["frames"], item.request["frame_files"]).num_frames == 2


# -- prompts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("exp, n, expected", [
    ("The dog jumping over the fence.", 5, "Please segment the dog jumping over the fence in this video."),
    ("A Man in red", 5, "Please segment the Man in red in this video."),  # only the first letter lowered
    ("the a bird", 5, "Please segment the bird in this video."),  # 'the ' then 'a ', each once, in order
    ("an apple...", 1, "Please segment the apple in this image."),
    ("which cat moves?", 5, "Please segment the which cat moves? in this video."),  # no sentence rule here
])
def test_query_prompt(exp, n, expected):
    assert query_prompt(exp, n) == expected


# -- MeViS (valid_u) / Ref-SAV: eval_seg.py metrics ---------------------------------------------


@pytest.fixture
def mini_mevis(tmp_path):
    """valid_u with two videos; expression 'v1/0' refers to two objects (their masks add up)."""
    root = tmp_path / "mevis" / "valid_u"
    write_frames(root / "JPEGImages" / "v1", ["00000", "00001"])
    write_frames(root / "JPEGImages" / "v2", ["00000", "00001"])
    meta = {"videos": {
        "v1": {"frames": ["00000", "00001"], "expressions": {
            "0": {"exp": "The two boxes", "obj_id": [0, 1], "anno_id": [10, 11]},
            "1": {"exp": "box moving right", "obj_id": [0], "anno_id": [10]}}},
        "v2": {"frames": ["00000", "00001"], "expressions": {
            "0": {"exp": "a small square", "obj_id": [0], "anno_id": [20]}}}}}
    (root / "meta_expressions.json").write_text(json.dumps(meta))
    masks = {"10": [rle_encode(OBJ_A), rle_encode(OBJ_A)], "11": [rle_encode(OBJ_B), None],
             "20": [None, rle_encode(OBJ_B)]}
    (root / "mask_dict.json").write_text(json.dumps(masks))
    return tmp_path / "mevis"


def mevis_gt():
    return {("v1", "0"): [OBJ_A | OBJ_B, OBJ_A], ("v1", "1"): [OBJ_A, OBJ_A], ("v2", "0"): [EMPTY, OBJ_B]}


def test_mevis_requests_follow_the_authors(mini_mevis):
    items = MeViS(mini_mevis, "valid_u").load_items()
    assert [i.id for i in items] == ["v1::0", "v1::1", "v2::0"]
    assert items[0].request == {
        "frames": str((mini_mevis / "valid_u" / "JPEGImages" / "v1").resolve()),
        "frame_files": ["00000.jpg", "00001.jpg"], "prompt": "Please segment the two boxes in this video.",
        "propagate": "all", "sample_frames": 16}


def score_pngs(bench, preds):
    items = bench.load_items()
    return {(r.item.video, r.item.exp_id): r for r in score_items(bench, items, prediction_source(bench, preds))}


def test_mevis_metrics_perfect_empty_shifted_wrong_missing(mini_mevis, tmp_path):
    gt = mevis_gt()
    sets = {
        "perfect": {k: v for k, v in gt.items()},
        "empty": {k: [EMPTY, EMPTY] for k in gt},
        "shifted": {("v1", "0"): [OBJ_A_SHIFT | OBJ_B, OBJ_A_SHIFT], ("v1", "1"): [OBJ_A_SHIFT, OBJ_A_SHIFT],
                    ("v2", "0"): [EMPTY, OBJ_B]},
        "wrong": {("v1", "0"): [OBJ_B, OBJ_B], ("v1", "1"): [OBJ_B, OBJ_B], ("v2", "0"): [OBJ_A, OBJ_A]},
    }
    bench = MeViS(mini_mevis, "valid_u")
    for name, preds in sets.items():
        root = tmp_path / name
        for (v, e), frames in preds.items():
            write_png_preds(root, v, e, dict(zip(["00000", "00001"], frames)))
        got = score_pngs(bench, root)
        for key, frames in preds.items():
            j = np.mean([ref_j(g, p) for g, p in zip(gt[key], frames)])
            f = np.mean([ref_f(g, p) for g, p in zip(gt[key], frames)])
            assert got[key].scores["J"] == pytest.approx(j, abs=1e-12), (name, key)
            assert got[key].scores["F"] == pytest.approx(f, abs=1e-12), (name, key)
            assert not got[key].failed
    # hand checks of the reference itself: shifted square J = 12 / 20; empty vs present = 0; both empty = 1
    assert ref_j(OBJ_A, OBJ_A_SHIFT) == pytest.approx(0.6)
    assert score_pngs(bench, tmp_path / "empty")[("v2", "0")].scores == {"J": 0.5, "F": 0.5}
    assert score_pngs(bench, tmp_path / "wrong")[("v1", "1")].scores["J"] == 0.0  # boundaries touch: F > 0
    # missing: a frame file and a whole video folder → scored 0 and counted as failed
    root = tmp_path / "missing"
    write_png_preds(root, "v1", "0", {"00000": OBJ_A | OBJ_B, "00001": None})
    write_png_preds(root, "v1", "1", {"00000": OBJ_A, "00001": OBJ_A})
    got = score_pngs(bench, root)
    assert got[("v1", "0")].failed and got[("v1", "0")].scores == {"J": 0.0, "F": 0.0}
    assert got[("v2", "0")].failed and "not found" in got[("v2", "0")].error
    assert not got[("v1", "1")].failed and got[("v1", "1")].scores == {"J": 1.0, "F": 1.0}
    summary = bench.summarize(list(got.values()))
    assert summary == {"J": round(100 / 3, 2), "F": round(100 / 3, 2), "J&F": round(100 / 3, 2)}


def test_mevis_cli_summary_and_exit_codes(mini_mevis, tmp_path):
    perfect = tmp_path / "perfect"
    for (v, e), frames in mevis_gt().items():
        write_png_preds(perfect, v, e, dict(zip(["00000", "00001"], frames)))
    # relative --data and --preds resolve against the working directory
    r = run_cli("mevis", "--data", "mevis", "--split", "valid_u", "--preds", "perfect", "-o", "eval", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert {k: summary[k] for k in ("J", "F", "J&F")} == {"J": 100.0, "F": 100.0, "J&F": 100.0}
    assert summary["items"] == {"total": 3, "scored": 3, "failed": 0, "no_mask": 0, "failures": []}
    assert "3 of 3 items scored" in r.stdout and "published 3B" in r.stdout
    header = (tmp_path / "eval" / "items.csv").read_text().splitlines()[0]
    assert header == "id,video,exp_id,exp,J,F,status,error"
    (perfect / "v2" / "0" / "00001.png").unlink()
    r = run_cli("mevis", "--data", "mevis", "--split", "valid_u", "--preds", "perfect", "-o", "eval2", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    summary = json.loads((tmp_path / "eval2" / "summary.json").read_text())
    assert summary["items"]["failed"] == 1 and summary["items"]["failures"][0]["id"] == "v2::0"
    assert summary["J"] == round(100 * 2 / 3, 2)
    assert "2 of 3 items scored, 1 failed (scored 0)" in r.stdout
    r = run_cli("mevis", "--data", "nowhere", "--preds", "perfect", cwd=tmp_path)
    assert r.returncode == 2 and "nowhere: dataset folder not found" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("mevis", "--data", "mevis", "--split", "valid", "--preds", "perfect", cwd=tmp_path)
    assert r.returncode == 2 and "valid/meta_expressions.json: not found" in r.stderr
    (tmp_path / "mevis" / "valid_u" / "meta_expressions.json").write_text(json.dumps({"video": {}}))
    r = run_cli("mevis", "--data", "mevis", "--split", "valid_u", "--preds", "perfect", cwd=tmp_path)
    assert r.returncode == 2 and "not in the expected format (KeyError: 'videos')" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_mevis_valid_and_ref_youtube_vos_write_a_submission_zip(tmp_path):
    data = tmp_path / "ytvos"
    write_frames(data / "valid" / "JPEGImages" / "vid a", ["00000", "00005"])
    meta = {"videos": {"vid a": {"frames": ["00000", "00005"], "expressions": {"0": {"exp": "a dog"},
                                                                                 "1": {"exp": "the cat"}}}}}
    (data / "meta_expressions" / "valid").mkdir(parents=True)
    (data / "meta_expressions" / "valid" / "meta_expressions.json").write_text(json.dumps(meta))
    preds = tmp_path / "preds"
    write_png_preds(preds, "vid a", "0", {"00000": OBJ_A, "00005": OBJ_B})  # "1" missing: written empty
    r = run_cli("ref-youtube-vos", "--data", data, "--preds", preds, "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    zpath = tmp_path / "out" / "ref-youtube-vos_valid_submission.zip"
    assert "no public masks" in r.stdout
    with zipfile.ZipFile(zpath) as zf:
        names = sorted(zf.namelist())
        assert names == [f"Annotations/vid a/{e}/{f}.png" for e in "01" for f in ("00000", "00005")]
        with zf.open("Annotations/vid a/0/00005.png") as fh:
            assert (np.asarray(Image.open(fh)) > 0).tolist() == OBJ_B.tolist()
        with zf.open("Annotations/vid a/1/00000.png") as fh:
            assert not np.asarray(Image.open(fh)).any()


def test_mevis_valid_submission_zip_has_videos_at_the_root(mini_mevis, tmp_path):
    root = mini_mevis / "valid"
    write_frames(root / "JPEGImages" / "v9", ["00000"])
    (root / "meta_expressions.json").write_text(json.dumps({"videos": {"v9": {
        "frames": ["00000"], "expressions": {"4": {"exp": "the bird"}}}}}))
    preds = tmp_path / "preds"
    write_png_preds(preds, "v9", "4", {"00000": OBJ_A})
    r = run_cli("mevis", "--data", mini_mevis, "--split", "valid", "--preds", preds, "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(tmp_path / "out" / "mevis_valid_submission.zip") as zf:
        assert zf.namelist() == ["v9/4/00000.png"]
    assert not (tmp_path / "out" / "summary.json").exists()  # no score without masks


def test_ref_sav_prompt_and_layout(tmp_path):
    data = tmp_path / "ref_sav"
    write_frames(data / "valid" / "videos" / "sav_1", ["00000", "00004"])
    meta = {"videos": {"sav_1": {"frames": ["00000", "00004"], "expressions": {
        "3": {"exp": " The red car on the left. ", "obj_id": [3], "anno_id": [7]}}}}}
    (data / "valid" / "meta_expressions_valid.json").write_text(json.dumps(meta))
    (data / "valid" / "mask_dict.json").write_text(json.dumps({"7": [rle_encode(OBJ_A), rle_encode(OBJ_B)]}))
    bench = RefSAV(data)
    [item] = bench.load_items()
    assert item.request["prompt"] == "Please segment the object according to the description: The red car on the left."
    write_png_preds(tmp_path / "p", "sav_1", "3", {"00000": OBJ_A, "00004": EMPTY})
    got = score_pngs(bench, tmp_path / "p")[("sav_1", "3")]
    assert got.scores == {"J": 0.5, "F": 0.5}  # frame 0 perfect, frame 1 misses the object


# -- Ref-DAVIS17: pickle with bytes counts, numbering over string-sorted ids ------------------------


def bytes_rle(m):
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": bytes(rle["counts"])}


def test_ref_davis17_numbering_over_sorted_expression_ids(tmp_path):
    data = tmp_path / "ref_davis17"
    write_frames(data / "DAVIS" / "JPEGImages" / "480p" / "zebra", ["00000"])
    write_frames(data / "DAVIS" / "JPEGImages" / "480p" / "bike", ["00000"])
    # file order: zebra before bike, and expression "2" before "10"
    meta = {"videos": {"zebra": {"frames": ["00000"], "expressions": {"2": {"exp": "a zebra"},
                                                                       "10": {"exp": "the other zebra"}}},
                       "bike": {"frames": ["00000"], "expressions": {"0": {"exp": "a bike"}}}}}
    (data / "meta_expressions" / "valid").mkdir(parents=True)
    (data / "meta_expressions" / "valid" / "meta_expressions.json").write_text(json.dumps(meta))
    (data / "valid").mkdir()
    # their numbering: sorted videos (bike, zebra), string-sorted ids ("10" < "2"):
    # bike/0 → 0, zebra/10 → 1, zebra/2 → 2
    masks = {"0": [bytes_rle(OBJ_B)], "1": [bytes_rle(OBJ_A)], "2": [bytes_rle(OBJ_A_SHIFT)]}
    (data / "valid" / "mask_dict.pkl").write_bytes(pickle.dumps(masks))
    bench = RefDAVIS17(data)
    items = bench.load_items()
    assert [i.id for i in items] == ["zebra::2", "zebra::10", "bike::0"]
    assert items[0].request["prompt"] == "Please segment the zebra in this image."  # one frame: 'image'
    preds = tmp_path / "preds"
    write_png_preds(preds, "bike", "0", {"00000": OBJ_B})
    write_png_preds(preds, "zebra", "10", {"00000": OBJ_A})
    write_png_preds(preds, "zebra", "2", {"00000": OBJ_A_SHIFT})
    got = score_pngs(bench, preds)
    assert all(r.scores == {"J": 1.0, "F": 1.0} for r in got.values())
    # numbering in file order (zebra/2 → 0, ...) would have matched zebra/2 with the bike
    swapped = tmp_path / "swapped"
    write_png_preds(swapped, "bike", "0", {"00000": OBJ_A_SHIFT})
    write_png_preds(swapped, "zebra", "10", {"00000": OBJ_A})
    write_png_preds(swapped, "zebra", "2", {"00000": OBJ_B})
    got = score_pngs(bench, swapped)
    assert got[("zebra", "2")].scores["J"] == 0.0 and got[("zebra", "2")].scores["F"] < 1
    assert got[("bike", "0")].scores["J"] == 0.0 and got[("zebra", "10")].scores == {"J": 1.0, "F": 1.0}


def test_ref_davis17_refuses_a_pickle_with_code(tmp_path):
    data = tmp_path / "ref_davis17"
    (data / "meta_expressions" / "valid").mkdir(parents=True)
    (data / "meta_expressions" / "valid" / "meta_expressions.json").write_text(json.dumps({"videos": {}}))
    (data / "valid").mkdir()
    (data / "valid" / "mask_dict.pkl").write_bytes(pickle.dumps(Boom()))
    r = run_cli("ref-davis17", "--data", data, "--preds", tmp_path)
    assert r.returncode == 2 and "mask_dict.pkl: refusing to unpickle" in r.stderr
    assert "posix.system" in r.stderr or "os.system" in r.stderr


# -- GroundMoRe ------------------------------------------------------------------------------------

GM_VIDEO = "clipA_0001_0010"  # clip starts at 00:01
GM_N = 25


def gm_indices():
    """np.linspace(0, 24, 20, dtype=int) computed exactly: floor(i · 24 / 19)."""
    return [math.floor(Fraction(i * (GM_N - 1), 19)) for i in range(20)]


@pytest.fixture
def mini_groundmore(tmp_path):
    data = tmp_path / "groundmore"
    root = data / "annotations" / GM_VIDEO
    write_frames(root / "images", [f"frame_{i:06d}" for i in range(GM_N)])
    (root / "masks").mkdir()
    for i in range(GM_N):  # object 1 = A, object 2 = B on every frame (palette PNGs, DAVIS style)
        m = np.zeros((H, W), np.uint8)
        m[OBJ_A] = 1
        m[OBJ_B] = 2
        img = Image.fromarray(m, mode="P")
        img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
        img.save(root / "masks" / f"frame_{i:06d}.png")
    meta = {"videos": {GM_VIDEO: {"questions": {
        "q0": {"question": "Who pushes the box", "answer": "man", "obj_id": "1", "q_type": "Causal",
               "action_start": "00:02", "action_end": "00:04"},
        "q1": {"question": "What is moved before the door opens?", "answer": "box", "obj_id": "2",
               "q_type": "Sequential", "action_start": "00:02", "action_end": "00:03"}}}}}
    (data / "test_v2.json").write_text(json.dumps(meta))
    return data


def test_groundmore_requests_20_frames_by_linspace(mini_groundmore):
    items = GroundMoRe(mini_groundmore).load_items()
    assert [i.id for i in items] == [f"{GM_VIDEO}::q0", f"{GM_VIDEO}::q1"]
    req = items[0].request
    assert req["frame_files"] == [f"frame_{i:06d}.jpg" for i in gm_indices()]
    assert req["prompt"] == "Who pushes the box? Please answer the question and provide the segmentation mask."
    assert items[1].request["prompt"].startswith("What is moved before the door opens? Please answer")
    assert req["propagate"] == "all" and req["sample_frames"] == 16


def test_groundmore_metrics_action_window(mini_groundmore, tmp_path):
    idx = gm_indices()
    # q0: window (2-1)·6 = 6 .. (4-1)·6-1 = 17; q1: 6 .. (3-1)·6-1 = 11
    in_q0 = [i for i in idx if 6 <= i <= 17]
    in_q1 = [i for i in idx if 6 <= i <= 11]
    assert len(in_q0) == 10 and len(in_q1) == 5
    preds = tmp_path / "preds"
    # q0: the object on every sampled frame → right inside the window, wrong (gt empty) outside
    write_png_preds(preds, GM_VIDEO, "q0", {f"frame_{i:06d}": OBJ_A for i in idx})
    # q1: nothing → right outside the window (both empty), wrong inside
    write_png_preds(preds, GM_VIDEO, "q1", {f"frame_{i:06d}": EMPTY for i in idx})
    bench = GroundMoRe(mini_groundmore)
    got = score_pngs(bench, preds)
    assert got[(GM_VIDEO, "q0")].scores == {"J": pytest.approx(10 / 20), "F": pytest.approx(10 / 20)}
    assert got[(GM_VIDEO, "q1")].scores == {"J": pytest.approx(15 / 20), "F": pytest.approx(15 / 20)}
    summary = bench.summarize(list(got.values()))
    assert summary["final_J"] == pytest.approx((0.5 + 0.75) / 2)
    assert summary["final_causal_JF"] == pytest.approx(0.5) and summary["final_sequential_J"] == pytest.approx(0.75)
    assert math.isnan(summary["final_counterfactual_J"])  # np.mean of no questions, as theirs
    # perfect: the object inside the window only; a missing sampled frame is an empty mask (their rule)
    perfect = tmp_path / "perfect"
    write_png_preds(perfect, GM_VIDEO, "q0", {f"frame_{i:06d}": OBJ_A if 6 <= i <= 17 else EMPTY for i in idx})
    write_png_preds(perfect, GM_VIDEO, "q1", {f"frame_{i:06d}": OBJ_B if 6 <= i <= 11 else None for i in idx})
    got = score_pngs(bench, perfect)
    assert all(r.scores == {"J": 1.0, "F": 1.0} and not r.failed for r in got.values())
    # wrong object inside the window, and a question without any prediction
    wrong = tmp_path / "wrong"
    write_png_preds(wrong, GM_VIDEO, "q0", {f"frame_{i:06d}": OBJ_B if 6 <= i <= 17 else EMPTY for i in idx})
    got = score_pngs(bench, wrong)
    # 10 frames in the window: J = 0, F = the reference F of the two touching squares; 10 outside: 1
    expected_f = (10 * ref_f(OBJ_A, OBJ_B) + 10) / 20
    assert got[(GM_VIDEO, "q0")].scores == {"J": pytest.approx(0.5), "F": pytest.approx(expected_f)}
    assert got[(GM_VIDEO, "q1")].failed and got[(GM_VIDEO, "q1")].scores == {"J": 0.0, "F": 0.0}


def test_groundmore_cli(mini_groundmore, tmp_path):
    idx = gm_indices()
    preds = tmp_path / "preds"
    write_png_preds(preds, GM_VIDEO, "q0", {f"frame_{i:06d}": OBJ_A if 6 <= i <= 17 else EMPTY for i in idx})
    write_png_preds(preds, GM_VIDEO, "q1", {f"frame_{i:06d}": EMPTY for i in idx})
    r = run_cli("groundmore", "--data", mini_groundmore, "--preds", preds, "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["final_J"] == pytest.approx((1 + 0.75) / 2) and summary["final_JF"] == pytest.approx(0.875)
    assert summary["final_descriptive_J"] is None or math.isnan(summary["final_descriptive_J"])


# -- end to end with the tiny checkpoint ------------------------------------------------------------


@pytest.mark.slow
def test_mevis_end_to_end_with_tiny_checkpoint_then_preds_from_results(mini_mevis, tmp_path, conformance_dir):
    args = ["mevis", "--data", "mevis", "--split", "valid_u", "-o", "run", "--limit", "1",
            "--model", conformance_dir / "tiny-unipixel", "--max-new-tokens", "8"]
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode in (0, 3), r.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["items"]["total"] == 1
    pngs = sorted((tmp_path / "run" / "preds" / "v1" / "0").glob("*.png"))
    assert [p.stem for p in pngs] == ["00000", "00001"] and Image.open(pngs[0]).size == (W, H)
    again = run_cli("mevis", "--data", "mevis", "--split", "valid_u", "--limit", "1", "--preds", "run/results",
                    "-o", "rescored", cwd=tmp_path)
    assert again.returncode == r.returncode
    rescored = json.loads((tmp_path / "rescored" / "summary.json").read_text())
    assert {k: rescored[k] for k in ("J", "F", "J&F")} == {k: summary[k] for k in ("J", "F", "J&F")}
    run_cli("mevis", "--data", "mevis", "--split", "valid_u", "--limit", "1", "--preds", "run/preds",
            "-o", "frompng", cwd=tmp_path)
    assert json.loads((tmp_path / "frompng" / "summary.json").read_text())["J"] == summary["J"]


@pytest.mark.slow
def test_groundmore_end_to_end_with_tiny_checkpoint(mini_groundmore, tmp_path, conformance_dir):
    r = run_cli("groundmore", "--data", mini_groundmore, "-o", tmp_path / "run", "--limit", "1",
                "--model", conformance_dir / "tiny-unipixel", "--max-new-tokens", "8")
    assert r.returncode in (0, 3), r.stderr
    results = __import__("unipixel_cli.output", fromlist=["read_results"]).read_results(tmp_path / "run" / "results")
    assert len(results) == 1
    row = results.iloc[0]
    if row["status"] == "ok" and len(row["objects"]):
        assert len(row["objects"][0]["masks"]) == 20  # SAM 2 over the 20 sampled frames
    pngs = sorted((tmp_path / "run" / "preds" / GM_VIDEO / "q0").glob("*.png"))
    assert [p.stem for p in pngs] == [f"frame_{i:06d}" for i in gm_indices()]


# -- --preds from our own results dataset ------------------------------------------------------------


def result_row(row_id, masks=None, status="ok", h=H, w=W):
    objects = [] if masks is None else [{"object_id": 0, "source": "seg", "score": 1.0,
                                         "masks": [rle_encode(m) for m in masks]}]
    return {"id": row_id, "task": "segment", "media": "x", "prompt": "p", "answer": "a", "raw_answer": "a",
            "frame_indices": list(range(len(masks or []))), "height": h, "width": w, "objects": objects,
            "status": status, "error": None if status == "ok" else "x.jpg: file not found"}


def test_preds_from_a_results_dataset(mini_mevis, tmp_path):
    from unipixel_cli.output import ResultsWriter

    writer = ResultsWriter(tmp_path / "results")
    writer.write(result_row("v1::0", [OBJ_A | OBJ_B, OBJ_A]))  # perfect
    writer.write(result_row("v1::1", None))  # answered without <|seg|>: empty masks, as the authors score it
    writer.write(result_row("v2::0", status="error"))  # failed request: scored 0, counted
    writer.close()
    r = run_cli("mevis", "--data", mini_mevis, "--split", "valid_u", "--preds", tmp_path / "results",
                "-o", tmp_path / "out")
    assert r.returncode == 3, r.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # v1::1 empty vs OBJ_A on both frames: J = F = 0; v1::0: 1; v2::0 failed: 0
    assert summary["J"] == round(100 / 3, 2) and summary["F"] == round(100 / 3, 2)
    assert summary["items"]["failed"] == 1 and summary["items"]["no_mask"] == 1
    assert summary["items"]["failures"][0] == {"id": "v2::0", "error": "request failed: x.jpg: file not found"}
    assert "1 answered without a mask" in r.stdout


def test_run_path_relative_data_and_failed_requests(mini_mevis, tmp_path, monkeypatch):
    """The run path without a model: the manifest it hands to the runner names absolute frame
    folders even for a relative --data, and failed requests give exit 3 with the items counted."""
    from unipixel_cli.bench.base import run_benchmark
    from unipixel_cli.manifest import load_manifest
    from unipixel_cli.output import ResultsWriter

    monkeypatch.chdir(tmp_path)
    seen = {}

    def fake_runner(manifest: Path, results: Path) -> int:
        rows, bad = load_manifest(manifest, "segment")
        seen["rows"] = rows
        assert not bad
        writer = ResultsWriter(results)
        writer.write(result_row("v1::0", [OBJ_A | OBJ_B, OBJ_A]))
        writer.write(result_row("v1::1", status="error"))
        writer.write(result_row("v2::0", status="error"))
        writer.close()
        return 3

    outcome = run_benchmark(MeViS(Path("mevis"), "valid_u"), Path("out"), fake_runner)
    assert all(r.media_path.is_absolute() and r.media_path.is_dir() for r in seen["rows"])
    assert [r.row.frame_files for r in seen["rows"]] == [["00000.jpg", "00001.jpg"]] * 3
    assert outcome.exit_code == 3 and outcome.requests_failed == 2
    assert [r.item.id for r in outcome.report.failed] == ["v1::1", "v2::0"]
    assert outcome.report.summary["J"] == round(100 / 3, 2)
    # the failed requests are written as empty PNGs in the authors' layout, sized like the frames
    png = tmp_path / "out" / "preds" / "v2" / "0" / "00001.png"
    assert Image.open(png).size == (W, H) and not np.asarray(Image.open(png)).any()
    # a runner that could not start (lock held, model missing) ends the run with its own code
    assert run_benchmark(MeViS(Path("mevis"), "valid_u"), Path("out2"), lambda m, r: 4).exit_code == 4
    assert not (tmp_path / "out2" / "summary.json").exists()


def test_bench_help_lists_every_video_benchmark_and_a_shard_stops_before_scoring(mini_mevis, tmp_path):
    from unipixel_cli.bench.base import run_benchmark

    r = run_cli("--help")
    assert r.returncode == 0
    for name in ("revos", "mevis", "ref-youtube-vos", "ref-davis17", "ref-sav", "groundmore"):
        assert f" {name} " in r.stdout, name
    calls = []
    outcome = run_benchmark(MeViS(mini_mevis, "valid_u"), tmp_path / "out", lambda m, res: calls.append(m) or 0,
                            score=False)
    assert len(calls) == 1 and outcome.exit_code == 0 and outcome.report is None
    assert not (tmp_path / "out" / "summary.json").exists()
