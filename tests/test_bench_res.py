"""RefCOCO family (REFER layout) and ReasonSeg: loaders, prompts and the authors' cIoU / gIoU /
BBox Acc on synthetic mini-sets. Expected values are worked out by hand in the comments."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from unipixel_cli.bench.base import BenchDataError, prediction_source, score_items, write_reports
from unipixel_cli.bench.res import ReasonSeg, RefCOCO, RefCOCOg, box_iou, min_box, normalise_query
from unipixel_cli.output import ResultsWriter, rle_encode

H = W = 20


def rect(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    """Rows y0..y1 and columns x0..x1, inclusive."""
    m = np.zeros((h, w), bool)
    m[y0:y1 + 1, x0:x1 + 1] = True
    return m


GT1 = rect(2, 7, 3, 10)  # 6 rows x 8 cols = 48 px; COCO bbox [3, 2, 8, 6] → box [3, 2, 11, 8]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE (column-major run lengths starting with zeros), built by hand."""
    flat = mask.flatten(order="F").astype(int)
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def write_results(path: Path, masks: dict[str, np.ndarray | None], failed: tuple[str, ...] = ()) -> Path:
    w = ResultsWriter(path, flush_rows=100)
    for row_id, m in masks.items():
        objects = [] if m is None else [{"object_id": 0, "source": "seg", "score": 1.0, "masks": [rle_encode(m)]}]
        w.write({"id": row_id, "task": "segment", "status": "ok", "answer": "It is.", "frame_indices": [0],
                 "height": H, "width": W, "objects": objects})
    for row_id in failed:
        w.write({"id": row_id, "task": "segment", "status": "error", "error": "line 3: boom"})
    w.close()
    return path


@pytest.fixture
def refer_root(tmp_path: Path) -> Path:
    root = tmp_path / "refer_seg"
    images = root / "images/mscoco/images/train2014"
    images.mkdir(parents=True)
    for name in ("COCO_train2014_000000000001.jpg", "COCO_train2014_000000000002.jpg"):
        Image.new("RGB", (W, H), (90, 90, 90)).save(images / name)
    instances = {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": H, "width": W},
                   {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": H, "width": W}],
        "annotations": [{"id": 11, "image_id": 1, "bbox": [3, 2, 8, 6], "category_id": 1,
                         "segmentation": uncompressed_rle(GT1)},
                        {"id": 12, "image_id": 2, "bbox": [0, 0, 5, 5], "category_id": 1,
                         "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]]}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    sent = [{"sent_id": 100 + k, "sent": f"The box {k}.", "tokens": [], "raw": ""} for k in range(5)]
    refs = [
        # image 2 first in the file, but in testB: excluded from val, included in testB
        {"ref_id": 2, "ann_id": 12, "image_id": 2, "split": "testB", "category_id": 1,
         "sentences": [{"sent_id": 200, "sent": "a square", "tokens": [], "raw": ""}]},
        {"ref_id": 1, "ann_id": 11, "image_id": 1, "split": "val", "category_id": 1, "sentences": sent},
    ]
    for ds_name, split_by in (("refcoco", "unc"), ("refcocog", "umd")):
        (root / ds_name).mkdir()
        (root / ds_name / "instances.json").write_text(json.dumps(instances))
        with open(root / ds_name / f"refs({split_by}).p", "wb") as f:
            pickle.dump(refs, f)
    return root


def test_query_normalisation_and_prompts():
    assert normalise_query("The man on the left.") == "man on the left"
    assert normalise_query("the a dog") == "dog"  # each article removed once, in order the/an/a
    assert normalise_query("An apple") == "apple"
    assert normalise_query("theater seat") == "theater seat"


def test_refer_loader_order_split_and_requests(refer_root: Path):
    items = RefCOCO(refer_root, "val").load_items()
    assert [i.id for i in items] == [f"COCO_train2014_000000000001::{100 + k}" for k in range(5)]
    assert items[0].request == {"image": str(refer_root / "images/mscoco/images/train2014/"
                                             "COCO_train2014_000000000001.jpg"),
                                "prompt": "Please segment the box 0 in this image.", "sample_frames": 16}
    test_b = RefCOCO(refer_root, "testB").load_items()
    assert [i.id for i in test_b] == ["COCO_train2014_000000000002::200"]
    assert test_b[0].request["prompt"] == "Please segment the square in this image."
    # the polygon ground truth decodes like pycocotools does it
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([[0, 0, 5, 0, 5, 5, 0, 5]], H, W)))
    assert (test_b[0].gt.gt((H, W)) == expected.astype(bool)).all()
    assert test_b[0].gt.box == [0, 0, 5, 5]


def test_refer_missing_files_are_named(tmp_path: Path, refer_root: Path):
    (refer_root / "refcoco" / "refs(unc).p").unlink()
    with pytest.raises(BenchDataError, match=r"refs\(unc\)\.p"):
        RefCOCO(refer_root, "val").load_items()
    with pytest.raises(BenchDataError, match="unknown split"):
        RefCOCOg(refer_root, "testA")


def test_refer_pickle_with_code_is_refused(refer_root: Path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(refer_root / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump([Evil()], f)
    with pytest.raises(BenchDataError, match="refusing to unpickle"):
        RefCOCO(refer_root, "val").load_items()


def test_min_box_drops_small_components_and_box_iou():
    m = rect(2, 7, 3, 10)
    m[15:18, 15:18] = True  # 9 px: below their 10 px minimum, ignored
    assert min_box(m) == [3.0, 2.0, 10.0, 7.0]
    assert min_box(rect(0, 2, 0, 2)) is None
    # [3,2,10,7] vs [3,2,11,8]: areas 35 and 48, intersection 35 → 35/48
    assert box_iou([3, 2, 10, 7], [3, 2, 11, 8]) == pytest.approx(35 / 48, abs=1e-7)


def test_refcoco_metrics_on_predictions_of_every_quality(refer_root: Path, tmp_path: Path):
    bench = RefCOCO(refer_root, "val")
    items = bench.load_items()
    ids = [i.id for i in items]
    preds = write_results(tmp_path / "preds", {
        ids[0]: GT1,                      # perfect: 48/48, box IoU 35/48 → hit
        ids[1]: rect(2, 7, 7, 14),        # shifted 4 px right: inter 24, union 72; box IoU 20/63 → miss
        ids[2]: None,                     # no <|seg|>: empty mask, inter 0, union 48
        ids[3]: rect(3, 5, 4, 6),         # 9 px inside: inter 9, union 48; component < 10 px → no box → miss
    }, failed=(ids[4],))                  # failed request: scored as empty (union 48) and listed
    results = score_items(bench, items, prediction_source(bench, preds))
    report = write_reports(bench, results, tmp_path / "out")
    s = report.summary
    assert s["Cum Inter"] == 48 + 24 + 0 + 9 + 0
    assert s["Cum Union"] == 48 + 72 + 48 + 48 + 48
    assert s["CIoU"] == pytest.approx(100 * 81 / 264, abs=1e-9)
    assert s["GIoU"] == pytest.approx(100 * (1 + 1 / 3 + 0 + 9 / 48 + 0) / 5, abs=1e-9)
    assert s["BBox Acc"] == pytest.approx(20.0, abs=1e-9)
    doc = json.loads(report.summary_path.read_text())
    assert doc["items"]["total"] == 5 and doc["items"]["failed"] == 1
    assert doc["items"]["failures"][0]["id"] == ids[4]


def test_refcoco_mis_sized_mask_scores_zero_and_is_listed(refer_root: Path, tmp_path: Path):
    bench = RefCOCO(refer_root, "val")
    items = bench.load_items()[:1]
    preds = write_results(tmp_path / "preds", {items[0].id: np.ones((10, 10), bool)})
    (result,) = score_items(bench, items, prediction_source(bench, preds))
    assert result.failed and "10x10" in result.error
    assert result.scores == {"inter": 0, "union": 48, "iou": 0.0, "hit": 0.0}


@pytest.fixture
def reasonseg_root(tmp_path: Path) -> Path:
    root = tmp_path / "ReasonSeg"
    (root / "val").mkdir(parents=True)

    def poly(x0, y0, x1, y1, label, name):
        return {"label": label, "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], "shape_type": "polygon",
                "image_name": name}

    # a: target x 2..13, y 2..11 (120 px) with an ignore hole x 4..7, y 4..6 (12 px) → 108 px
    #    (OpenCV's outline + fill of an axis-aligned rectangle covers both end columns/rows)
    Image.new("RGB", (24, 24)).save(root / "val" / "a.jpg")
    (root / "val" / "a.json").write_text(json.dumps({
        "text": ["What can hold water here?", "Which part is round?"], "is_sentence": True,
        "shapes": [poly(2, 2, 13, 11, "target", "a.jpg"), poly(4, 4, 7, 6, "ignore", "a.jpg"),
                   poly(15, 15, 20, 20, "flag", "a.jpg")]}))
    # b: a large ignore region drawn first, then the smaller target x 5..9, y 5..9 (25 px) on top
    Image.new("RGB", (24, 24)).save(root / "val" / "b.jpg")
    (root / "val" / "b.json").write_text(json.dumps({
        "text": ["The red Apple."], "is_sentence": False,
        "shapes": [poly(0, 0, 20, 20, "ignore", "b.jpg"), poly(5, 5, 9, 9, "target", "b.jpg")]}))
    return root


def test_reasonseg_loader_ignore_is_background_and_prompts(reasonseg_root: Path):
    items = ReasonSeg(reasonseg_root, "val").load_items()
    assert [i.id for i in items] == ["a::0", "a::1", "b::0"]
    assert items[0].request["prompt"] == "What can hold water here? Please provide the segmentation mask."
    assert items[2].request["prompt"] == "Please segment the red Apple in this image."
    a = items[0].gt.gt((24, 24))
    expected_a = rect(2, 11, 2, 13, 24, 24) & ~rect(4, 6, 4, 7, 24, 24)
    assert (a == expected_a).all() and a.sum() == 108
    b = items[2].gt.gt((24, 24))
    assert (b == rect(5, 9, 5, 9, 24, 24)).all()


def test_reasonseg_metrics(reasonseg_root: Path, tmp_path: Path):
    bench = ReasonSeg(reasonseg_root, "val")
    items = bench.load_items()
    hole = rect(2, 11, 2, 13, 24, 24) & ~rect(4, 6, 4, 7, 24, 24)
    w = ResultsWriter(tmp_path / "preds")
    for row_id, m in (("a::0", hole), ("a::1", rect(2, 11, 2, 13, 24, 24)), ("b::0", np.zeros((24, 24), bool))):
        w.write({"id": row_id, "task": "segment", "status": "ok", "frame_indices": [0], "height": 24, "width": 24,
                 "objects": [{"object_id": 0, "source": "seg", "score": 1.0, "masks": [rle_encode(m)]}]})
    w.close()
    results = score_items(bench, items, prediction_source(bench, tmp_path / "preds"))
    s = bench.summarize(results)
    # a::0 exact (108/108); a::1 covers the ignored hole too (108/120); b::0 empty (0/25)
    assert s["Cum Inter"] == 216 and s["Cum Union"] == 253
    assert s["CIoU"] == pytest.approx(100 * 216 / 253, abs=1e-9)
    assert s["GIoU"] == pytest.approx(100 * (1 + 0.9 + 0) / 3, abs=1e-9)
    assert s["BBox Acc"] == 0.0  # no boxes in ReasonSeg: their evaluator logs 0 too


def test_reasonseg_missing_folder_is_named(tmp_path: Path):
    (tmp_path / "ReasonSeg").mkdir()
    with pytest.raises(BenchDataError, match="val"):
        ReasonSeg(tmp_path / "ReasonSeg", "val").load_items()


def test_refcoco_preds_without_images_use_the_annotated_size(refer_root: Path, tmp_path: Path):
    bench = RefCOCO(refer_root, "val")
    items = bench.load_items()[:1]
    for jpg in (refer_root / "images/mscoco/images/train2014").iterdir():
        jpg.unlink()
    preds = write_results(tmp_path / "preds", {items[0].id: GT1})
    (result,) = score_items(bench, items, prediction_source(bench, preds))
    assert result.error is None and result.scores["iou"] == 1.0 and result.scores["union"] == 48
