"""Referring expression segmentation on single images: RefCOCO / RefCOCO+ / RefCOCOg (REFER
layout) and ReasonSeg (LabelMe JSON polygons), loaded, prompted and scored like the authors'
`infer_seg.py` + `eval_refcoco.py`.

Metrics (their definitions, computed per item then pooled):
* `inter`, `union` = |gt ∧ pred|, |gt ∨ pred| over the whole image (their "keep" mask never
  removes a pixel: ReasonSeg "ignore" polygons are drawn with -1 into a uint8 mask, which
  saturates to 0, so they end up as background);
* `iou` = inter / union, 1 when both are empty;
* `hit` (RefCOCO family only) = IoU ≥ 0.5 between the ground-truth box and the tightest box
  around the prediction's 8-connected components of ≥ 10 pixels (no box → miss);
* cIoU = Σinter / Σunion, gIoU = mean iou, BBox Acc = hits / items (0 for ReasonSeg, which has
  no boxes: the authors' log shows the same).
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from .base import BenchDataError, Benchmark, Item, ItemResult, Prediction, register, safe_load_pickle

REFER_DATASETS = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
REFER_SPLITS = {"refcoco": ("val", "testA", "testB"), "refcoco+": ("val", "testA", "testB"),
                "refcocog": ("val", "test")}
COCO_IMAGES = Path("images/mscoco/images/train2014")
MIN_COMPONENT_AREA = 10  # their get_min_box drops connected components smaller than this
BOX_HIT_IOU = 0.5


@dataclass
class ResItem:
    """One expression to segment in one image."""

    vid: str  # image file name without extension (their `vid`)
    qid: str  # sentence id (RefCOCO) or expression index (ReasonSeg)
    image: Path
    query: str
    kind: str  # query (a phrase) | sentence (a full instruction)
    gt: Callable[[tuple[int, int]], np.ndarray] = field(repr=False)  # image (H, W) → bool mask
    box: list[float] | None = None  # ground-truth [x0, y0, x1, y1] (RefCOCO family)
    size: tuple[int, int] | None = None  # (H, W) the annotation gives, used when the image is absent

    def frame_size(self) -> tuple[int, int]:
        """The image's (H, W), as theirs (masks are drawn at the loaded image's size); with
        `--preds` and no images on disk, the size the annotation file records."""
        if not self.image.is_file() and self.size is not None:
            return self.size
        return image_size(self.image)

    @property
    def item_id(self) -> str:
        return f"{self.vid}::{self.qid}"

    @property
    def prompt(self) -> str:
        return res_prompt(self.query, self.kind)


def normalise_query(query: str) -> str:
    """Their phrase clean-up: strip dots, lower-case the first letter, drop one leading the/an/a
    (each checked once, in that order)."""
    q = query.strip(".")
    q = q[:1].lower() + q[1:]
    for article in ("the ", "an ", "a "):
        if q.startswith(article):
            q = q[len(article):]
    return q


def res_prompt(query: str, kind: str) -> str:
    if kind == "sentence":
        return f"{query} Please provide the segmentation mask."
    return f"Please segment the {normalise_query(query)} in this image."


# -- RefCOCO family (REFER layout) ---------------------------------------------------------
def _refer_split_filter(split: str) -> Callable[[str], bool]:
    """REFER's getRefIds(split=...) rule: testA/testB match any split containing the letter."""
    if split in ("testA", "testB", "testC"):
        return lambda s: split[-1] in s
    if split in ("testAB", "testBC", "testAC"):
        return lambda s: s == split
    if split == "test":
        return lambda s: "test" in s
    if split in ("train", "val"):
        return lambda s: s == split
    raise BenchDataError(f"unknown REFER split {split!r} (val, test, testA, testB, train)")


def _polygon_or_rle_mask(seg, height: int, width: int) -> Callable[[tuple[int, int]], np.ndarray]:
    def decode(size: tuple[int, int]) -> np.ndarray:
        if isinstance(seg, list):  # polygons: one merged region
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, *seg["size"])
        else:
            rle = seg
        mask = mask_utils.decode(rle).astype(bool)
        return _resize_like_theirs(mask, size)
    return decode


def _resize_like_theirs(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Annotations made at another size are resized to the image (bilinear, then > 0), as
    their process_masks does; at the same size this is the identity."""
    if mask.shape == tuple(size):
        return mask
    import torchvision.transforms.functional as TF

    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (TF.resize(t, list(size))[0, 0] > 0).numpy()


def load_refer(data: Path, dataset: str, split: str) -> list[ResItem]:
    """Items of a REFER dataset split: `<data>/<dataset>/refs(<splitBy>).p` + `instances.json`,
    images under `<data>/images/mscoco/images/train2014/`. Ordered as the authors: images in
    order of their first ref, refs in file order, then sentences."""
    split_by = REFER_DATASETS[dataset]
    refs_path = data / dataset / f"refs({split_by}).p"
    inst_path = data / dataset / "instances.json"
    for p in (refs_path, inst_path):
        if not p.is_file():
            raise BenchDataError(f"{p} not found (expected the REFER layout: <data>/{dataset}/"
                                 f"refs({split_by}).p and instances.json)")
    keep = _refer_split_filter(split)
    refs = safe_load_pickle(refs_path)
    if not isinstance(refs, list):
        raise BenchDataError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    try:
        instances = json.loads(inst_path.read_text())
    except (OSError, ValueError) as e:
        raise BenchDataError(f"{inst_path}: cannot read ({e})") from e
    anns = {a["id"]: a for a in instances.get("annotations", [])}
    imgs = {i["id"]: i for i in instances.get("images", [])}
    by_image: dict[int, list[dict]] = defaultdict(list)
    for ref in refs:
        if keep(str(ref.get("split", ""))):
            by_image[ref["image_id"]].append(ref)
    items = []
    for image_id, image_refs in by_image.items():
        img = imgs.get(image_id)
        if img is None:
            raise BenchDataError(f"{inst_path}: image id {image_id} (used by ref {image_refs[0]['ref_id']}) "
                                 "is not in 'images'")
        vid = Path(img["file_name"]).stem
        for ref in image_refs:
            ann = anns.get(ref["ann_id"])
            if ann is None:
                raise BenchDataError(f"{inst_path}: annotation id {ref['ann_id']} (ref {ref['ref_id']}) "
                                     "is not in 'annotations'")
            x, y, w, h = ann["bbox"]
            gt = _polygon_or_rle_mask(ann["segmentation"], img["height"], img["width"])
            for sent in ref["sentences"]:
                items.append(ResItem(vid, str(sent["sent_id"]), data / COCO_IMAGES / img["file_name"],
                                     sent["sent"], "query", gt, [x, y, x + w, y + h],
                                     (img["height"], img["width"])))
    return items


# -- ReasonSeg ----------------------------------------------------------------------------
def _draw_polygon(mask: np.ndarray, points: list, value: int) -> None:
    """Outline (1 px, 8-connected) + fill with OpenCV, points truncated to int as theirs."""
    pts = np.array([points], dtype=np.int32)
    cv2.polylines(mask, pts, True, value, 1)
    cv2.fillPoly(mask, pts, value)


def reasonseg_mask(shapes: list[dict], size: tuple[int, int]) -> np.ndarray:
    """Their polygon rendering: shapes sorted by drawn area, largest first; "target" paints 1,
    "ignore" paints -1, which a uint8 mask saturates to 0 (background)."""
    areas = []
    for shape in shapes:
        tmp = np.zeros(size, np.uint8)
        _draw_polygon(tmp, shape["points"], 1)
        areas.append(int(tmp.sum()))
    mask = np.zeros(size, np.uint8)
    for j in np.argsort(areas)[::-1]:  # same numpy call as theirs, so ties break the same way
        shape = shapes[int(j)]
        _draw_polygon(mask, shape["points"], 1 if shape["label"] == "target" else 0)
    return mask.astype(bool)


def load_reasonseg(data: Path, split: str) -> list[ResItem]:
    """`<data>/<split>/<name>.jpg` + `<name>.json` (LabelMe: shapes, text, is_sentence), files in
    name order, one item per text."""
    folder = data / split
    if not folder.is_dir():
        raise BenchDataError(f"{folder} not found (expected the ReasonSeg layout: <data>/{split}/*.jpg + *.json)")
    items = []
    for image in sorted(p for p in folder.iterdir() if p.name.endswith("jpg")):
        meta_path = image.with_name(image.name[:-4] + ".json")
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError as e:
            raise BenchDataError(f"{meta_path} not found (the annotation of {image.name})") from e
        except (OSError, ValueError) as e:
            raise BenchDataError(f"{meta_path}: cannot read ({e})") from e
        shapes = []
        for shape in meta.get("shapes", []):
            if shape.get("label") not in ("target", "ignore", "flag"):
                raise BenchDataError(f"{meta_path}: unknown shape label {shape.get('label')!r}")
            if shape["label"] != "flag":
                shapes.append(shape)
        kind = "sentence" if meta.get("is_sentence") else "query"
        for qid, text in enumerate(meta.get("text", [])):
            items.append(ResItem(image.stem, str(qid), image, text, kind,
                                 lambda size, s=shapes: reasonseg_mask(s, size)))
    return items


# -- metrics -----------------------------------------------------------------------------
def min_box(pred: np.ndarray) -> list[float] | None:
    """Tightest [x0, y0, x1, y1] (pixel indices) around the 8-connected components of at least
    MIN_COMPONENT_AREA pixels; None when nothing is left."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(pred.astype(np.uint8) * 255, connectivity=8)
    big = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= MIN_COMPONENT_AREA]
    if not big:
        return None
    ys, xs = np.nonzero(np.isin(labels, big))
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


def box_iou(a: list[float], b: list[float]) -> float:
    """IoU of two [x0, y0, x1, y1] boxes, areas without +1, in float32 as their torch code."""
    t = torch.tensor([a, b], dtype=torch.float32)
    area = (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])
    wh = (torch.min(t[0, 2:], t[1, 2:]) - torch.max(t[0, :2], t[1, :2])).clamp(min=0)
    inter = wh[0] * wh[1]
    return float(inter / (area[0] + area[1] - inter))


@dataclass
class ResScore:
    inter: int
    union: int
    iou: float
    hit: bool | None  # None: the benchmark has no boxes


def score_mask(gt: np.ndarray, pred: np.ndarray | None, box: list[float] | None) -> ResScore:
    """Scores of one prediction; None (missing, failed, mis-sized) scores as an empty mask, which
    is what their inference writes for a failed sample."""
    if pred is None:
        pred = np.zeros_like(gt)
    inter = int(np.logical_and(gt, pred).sum())
    union = int(np.logical_or(gt, pred).sum())
    iou = 1.0 if union == 0 else inter / union
    hit = None
    if box is not None:
        found = min_box(pred)
        hit = found is not None and box_iou(found, box) >= BOX_HIT_IOU
    return ResScore(inter, union, iou, hit)


def summarize_res(scores: list[ResScore]) -> dict:
    """cIoU, gIoU, BBox Acc (×100, unrounded) and the pooled counts, as their eval_refcoco.py."""
    n = len(scores)
    cum_inter = sum(s.inter for s in scores)
    cum_union = sum(s.union for s in scores)
    return {
        "Cum Inter": cum_inter,
        "Cum Union": cum_union,
        "CIoU": 100 * cum_inter / cum_union if cum_union else 0.0,
        "GIoU": 100 * sum(s.iou for s in scores) / n if n else 0.0,
        "BBox Acc": 100 * sum(1 for s in scores if s.hit) / n if n else 0.0,
    }


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image without decoding its pixels."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except FileNotFoundError as e:
        raise BenchDataError(f"{path}: image not found") from e
    except OSError as e:
        raise BenchDataError(f"{path}: cannot read image ({e})") from e


# -- benchmarks ----------------------------------------------------------------------------
class ResBenchmark(Benchmark):
    """Shared request/score/summary of the single-image referring segmentation benchmarks."""

    task = "segment"
    metrics = ("inter", "union", "iou", "hit")
    has_boxes: ClassVar[bool] = True

    @abstractmethod
    def res_items(self) -> list[ResItem]:
        """The benchmark's expressions in the authors' order."""

    def load_items(self) -> list[Item]:
        try:
            res = self.res_items()
        except KeyError as e:
            raise BenchDataError(f"{self.data}: annotation key {e} missing ({self.layout})") from e
        # 1-frame video for the LLM: the 16-frame pixel budget goes to the one image, as theirs
        return [Item(r.item_id, {"image": str(r.image), "prompt": r.prompt, "sample_frames": 16},
                     video=r.vid, exp_id=r.qid, frames=[r.vid], gt=r, info={"query": r.query})
                for r in res]

    def _gt(self, item: Item) -> np.ndarray:
        r: ResItem = item.gt
        return r.gt(r.frame_size())

    def score(self, item: Item, prediction: Prediction) -> dict[str, float]:
        gt = self._gt(item)
        pred = prediction.masks.read(item.frames[0]) if prediction.masks is not None else None
        if pred is None:
            # an answer without <|seg|>: their inference catches it and scores an empty mask
            pred = np.zeros(gt.shape, bool)
        elif pred.shape != gt.shape:
            raise ValueError(f"mask is {pred.shape[1]}x{pred.shape[0]}, image is {gt.shape[1]}x{gt.shape[0]}")
        s = score_mask(gt, pred > 0, item.gt.box if self.has_boxes else None)
        return {"inter": s.inter, "union": s.union, "iou": s.iou, "hit": float(bool(s.hit))}

    def zero_scores(self, item: Item) -> dict[str, float]:
        """A failed item counts as an empty mask (their failed-inference path): its ground truth
        still enters Σunion."""
        try:
            union = int(self._gt(item).sum())
        except Exception:  # missing image: nothing to add
            union = 0
        return {"inter": 0, "union": union, "iou": 0.0, "hit": 0.0}

    def summarize(self, results: list[ItemResult]) -> dict:
        return summarize_res([ResScore(int(r.scores["inter"]), int(r.scores["union"]), float(r.scores["iou"]),
                                       bool(r.scores["hit"])) for r in results])

    def table(self, summary: dict) -> list[tuple[str, dict[str, float]]]:
        row = {"cIoU": summary["CIoU"], "gIoU": summary["GIoU"]}
        if self.has_boxes:
            row["BBox Acc"] = summary["BBox Acc"]
        return [(self.split, row)]


class _ReferBenchmark(ResBenchmark):
    layout = ("<data>/<dataset>/refs(unc|umd).p + instances.json, images in "
              "<data>/images/mscoco/images/train2014/ (the LISA refer_seg folder)")

    def res_items(self) -> list[ResItem]:
        return load_refer(self.data, self.name, self.split)


@register
class RefCOCO(_ReferBenchmark):
    name = "refcoco"
    title = "RefCOCO (RES)"
    splits = REFER_SPLITS["refcoco"]
    published = {"val": {"cIoU": (80.5, 80.8)}, "testA": {"cIoU": (82.6, 83.0)}, "testB": {"cIoU": (76.9, 77.4)}}


@register
class RefCOCOPlus(_ReferBenchmark):
    name = "refcoco+"
    title = "RefCOCO+ (RES)"
    splits = REFER_SPLITS["refcoco+"]
    published = {"val": {"cIoU": (74.3, 75.3)}, "testA": {"cIoU": (78.9, 80.1)}, "testB": {"cIoU": (68.4, 70.0)}}


@register
class RefCOCOg(_ReferBenchmark):
    name = "refcocog"
    title = "RefCOCOg (RES, umd)"
    splits = REFER_SPLITS["refcocog"]
    published = {"val": {"cIoU": (76.3, 76.4)}, "test": {"cIoU": (77.0, 77.1)}}


@register
class ReasonSeg(ResBenchmark):
    name = "reasonseg"
    title = "ReasonSeg"
    splits = ("val", "test")
    layout = "<data>/<split>/<name>.jpg + <name>.json (LabelMe polygons: target / ignore / flag)"
    published = {"val": {"gIoU": (64.0, 60.5), "cIoU": (56.2, 58.7)}}
    has_boxes = False
    metrics = ("inter", "union", "iou")

    def res_items(self) -> list[ResItem]:
        return load_reasonseg(self.data, self.split)

    def score(self, item: Item, prediction: Prediction) -> dict[str, float]:
        return {k: v for k, v in super().score(item, prediction).items() if k != "hit"}

    def zero_scores(self, item: Item) -> dict[str, float]:
        return {k: v for k, v in super().zero_scores(item).items() if k != "hit"}

    def summarize(self, results: list[ItemResult]) -> dict:
        return summarize_res([ResScore(int(r.scores["inter"]), int(r.scores["union"]), float(r.scores["iou"]), None)
                              for r in results])
