"""`unipixel export`: COCO JSON, PNGs and FiftyOne read back with their own libraries."""

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from unipixel_cli.export import ExportError, export_results, safe_name
from unipixel_cli.output import read_results

from .helpers import cli
from .results_factory import IMAGE_MASKS, VIDEO_MASKS, write_results

EXPECTED = {("vid", i): (m, [0, 5, 10]) for i, m in VIDEO_MASKS.items()}
EXPECTED |= {("img", i): (m, [0]) for i, m in IMAGE_MASKS.items()}


@pytest.fixture
def results(tmp_path):
    return write_results(tmp_path / "results")


def dataset_masks(results) -> dict:
    """(request id, object id) → ([T, H, W] masks, frames) as `read_results` decodes them."""
    df = read_results(results, decode_masks=True)
    out = {}
    for _, r in df[df["status"] == "ok"].iterrows():
        for o, arr in zip(r["objects"], r["mask_arrays"]):
            out[(r["id"], int(o["object_id"]))] = (arr, list(r["frame_indices"]))
    return out


def test_coco_round_trip_through_pycocotools(results, tmp_path):
    summary = export_results(results, tmp_path / "coco", "coco")
    coco = COCO(str(summary.path))
    assert (summary.requests, summary.skipped) == (2, 1)
    assert len(coco.getImgIds()) == 4  # 3 video frames + 1 image; the error row has none
    images = {(im["request_id"], im["frame_index"]): im for im in coco.loadImgs(coco.getImgIds())}
    from_dataset = dataset_masks(results)
    assert set(from_dataset) == set(EXPECTED)
    for (rid, oid), (masks, frames) in EXPECTED.items():
        for t, frame in enumerate(frames):
            image = images[(rid, frame)]
            assert (image["height"], image["width"]) == masks[t].shape
            anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])) if a["object_id"] == oid]
            got = coco.annToMask(anns[0]).astype(bool) if anns else np.zeros_like(masks[t])
            assert len(anns) == (1 if masks[t].any() else 0)  # absent objects get no annotation
            assert np.array_equal(got, masks[t])
            assert np.array_equal(got, from_dataset[(rid, oid)][0][t])
            if anns:
                assert anns[0]["score"] == pytest.approx(0.5 + 0.25 * oid if rid == "vid" else 0.75)
                assert anns[0]["area"] == masks[t].sum()


def test_png_objects_layout_round_trip(results, tmp_path):
    out = export_results(results, tmp_path / "png", "png").path
    from_dataset = dataset_masks(results)
    for (rid, oid), (masks, frames) in EXPECTED.items():
        for t, frame in enumerate(frames):
            img = Image.open(out / rid / str(oid) / f"{frame:05d}.png")
            assert img.mode == "L"
            arr = np.asarray(img)
            assert set(np.unique(arr)) <= {0, 255}
            assert np.array_equal(arr == 255, masks[t])
            assert np.array_equal(arr == 255, from_dataset[(rid, oid)][0][t])
    assert not (out / "bad").exists()


def test_png_palette_layout_holds_object_ids(results, tmp_path):
    out = export_results(results, tmp_path / "pal", "png", png_style="palette").path
    img = Image.open(out / "vid" / "00005.png")
    assert img.mode == "P"
    label = np.asarray(img)
    expected = np.zeros(label.shape, np.uint8)
    for oid, masks in VIDEO_MASKS.items():  # the two objects do not overlap
        expected[masks[1]] = oid + 1
    assert np.array_equal(label, expected)
    assert img.getpalette()[3:6] == [128, 0, 0]  # DAVIS/PASCAL colour of label 1


def test_export_errors_are_one_line_and_exit_2(results, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, words in [((tmp_path / "nope", "--format", "coco", "-o", tmp_path / "x"), "no such results"),
                        ((empty, "--format", "coco", "-o", tmp_path / "x"), "holds no results"),
                        ((results, "--format", "coco", "-o", results), "is a results dataset"),
                        ((results, "--format", "yaml", "-o", tmp_path / "x"), "coco, png, fiftyone")]:
        r = cli("export", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert words in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (results / "annotations.json").exists()
    r = cli("export", results, "--format", "coco", "-o", tmp_path / "ok")
    assert r.returncode == 0, r.stderr
    assert "2 requests" in r.stdout and (tmp_path / "ok" / "annotations.json").exists()


@pytest.mark.skipif(importlib.util.find_spec("fiftyone") is not None, reason="fiftyone is installed here")
def test_fiftyone_without_the_package_says_how_to_install(results, tmp_path):
    with pytest.raises(ExportError, match="pip install fiftyone"):
        export_results(results, tmp_path / "fo", "fiftyone")
    assert not (tmp_path / "fo").exists()


def test_fiftyone_samples_carry_the_masks(results):
    # FiftyOne is not a project extra: it needs a MongoDB server that this environment cannot
    # run; this checks the samples we build (no database needed) where fiftyone is installed
    fo = pytest.importorskip("fiftyone", reason="fiftyone not installed (pip install fiftyone)")
    from unipixel_cli.export import fiftyone_samples, load_results

    samples = {s["request_id"]: s for s in fiftyone_samples(fo, load_results(results))}
    for (rid, oid), (masks, frames) in EXPECTED.items():
        for t, frame in enumerate(frames):
            dets = samples[rid].frames[frame + 1]["detections"] if rid == "vid" else samples[rid]["detections"]
            found = [d for d in dets.detections if d["object_id"] == oid]
            assert len(found) == (1 if masks[t].any() else 0)
            if found:  # FiftyOne stores the mask cropped to its relative [x, y, w, h] box
                x, y, _, _ = found[0].bounding_box
                crop = np.asarray(found[0].mask, bool)
                full = np.zeros_like(masks[t])
                y0, x0 = round(y * 120), round(x * 160)
                full[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
                assert np.array_equal(full, masks[t])


def test_safe_names_never_leave_the_folder():
    assert safe_name("v1") == "v1"
    assert "/" not in safe_name("a/b") and safe_name("a/b") != safe_name("a_b")
    assert safe_name("..") not in ("..", ".")


def test_coco_info_records_the_run(results, tmp_path):
    data = json.loads(export_results(results, tmp_path / "c", "coco").path.read_text())
    assert data["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert {a["request_id"] for a in data["annotations"]} == {"vid", "img"}
