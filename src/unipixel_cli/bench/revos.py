"""`unipixel bench revos`: ReVOS (reasoning video object segmentation) run and scored like the
authors (dataset layout of the ReVOS release, prompts of their `infer_seg.py`, metrics of
their `eval_revos.py`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from .base import BenchDataError, Benchmark, Item, ItemResult, Prediction, register
from .revos_metrics import expression_scores, rounded
from .video import frame_request, query_prompt

RevosDataError = BenchDataError  # the name earlier versions raised


def revos_prompt(exp: str, num_frames: int) -> str:
    """The authors' ReVOS prompt: a sentence for questions, the query template otherwise."""
    text = exp.strip()
    if text.endswith("?"):
        return f"{text} Please provide the segmentation mask."
    return query_prompt(text, num_frames)


def frame_dir(data: Path, video: str) -> Path:
    """JPEGImages/<video> (or <video> directly, as the authors' loader reads it). A missing
    folder is not an error here: `--preds` needs no frames, and a run fails just that request."""
    for cand in (data / "JPEGImages" / video, data / video):
        if cand.is_dir():
            return cand
    return data / "JPEGImages" / video


@register
class ReVOS(Benchmark):
    name = "revos"
    title = "ReVOS"
    splits = ("valid",)
    layout = "JPEGImages/<video>/<frame>.jpg, meta_expressions_valid_.json, mask_dict.json, mask_dict_foreground.json"
    published = {"overall": {"J": (59.7, 61.7), "F": (64.4, 65.7), "J&F": (62.1, 63.7)}}
    metrics = ("J", "F", "JF", "A", "R")
    png_layout = True

    def load_items(self) -> list[Item]:
        videos = self.load_json(f"meta_expressions_{self.split}_.json").get("videos")
        if not isinstance(videos, dict):
            raise BenchDataError(f"{self.data}/meta_expressions_{self.split}_.json: no 'videos' object")
        self.masks = self.load_json("mask_dict.json")
        self.foreground = self.load_json("mask_dict_foreground.json")
        items = []
        for video, v in videos.items():
            frames = [str(n) for n in v["frames"]]
            folder = frame_dir(self.data, video)
            for exp_id, e in v["expressions"].items():
                request = frame_request(folder, frames, revos_prompt(e["exp"], len(frames)))
                items.append(Item(f"{video}::{exp_id}", request, video, str(exp_id), frames,
                                  gt=list(e.get("anno_id") or []),
                                  info={"exp": e["exp"], "type_id": int(e["type_id"])}))
        return items

    def score(self, item: Item, prediction: Prediction) -> dict[str, float]:
        j, f, a, r = self.raw_scores(item, prediction)
        # per-expression values are rounded first, the split means average the rounded values
        return {"J": rounded(j), "F": rounded(f), "JF": float(np.round(100 * (np.float64(j) + f) / 2, 2)),
                "A": rounded(a), "R": rounded(r)}

    def raw_scores(self, item: Item, prediction: Prediction) -> tuple[float, float, float, float]:
        masks = prediction.masks
        h, w = prediction.frame_size(item.frames[0])
        n = len(item.frames)
        gt = np.zeros((n, h, w), np.uint8)
        pred = np.zeros((n, h, w), np.uint8)
        fg = np.zeros((n, h, w), np.uint8)
        for t, name in enumerate(item.frames):
            for anno_id in item.gt:
                rle = self.masks[str(anno_id)][t]
                if rle:
                    gt[t] += mask_utils.decode(rle)  # uint8 sum: overlapping objects give 2
            f = mask_utils.decode(self.foreground[item.video]["masks_rle"][t])  # a list of RLEs → [H, W, n]
            fg[t] = f.sum(axis=2).astype(np.uint8) if f.ndim == 3 else f.astype(np.uint8)
            p = masks.read(name)
            if p is None:
                raise FileNotFoundError(f"no prediction for frame {name}")
            pred[t] = p
        return expression_scores(gt, pred, fg)

    def summarize(self, results: list[ItemResult]) -> dict:
        rows = [{**r.scores, "type_id": r.item.info["type_id"]} for r in results]
        return summarize(rows)

    def table(self, summary: dict) -> list[tuple[str, dict[str, float]]]:
        return [(name, {"J": v["J"], "F": v["F"], "J&F": v["JF"], "A": v["A"], "R": v["R"]})
                for name, v in summary.items()]

    def extra_reports(self, results: list[ItemResult], summary: dict, out: Path) -> list[Path]:
        """The authors' own file names: revos_<split>.json and the per-expression CSV."""
        rows = [expression_row(r.item, r.scores) for r in results]
        return list(write_reports(rows, summary, out, self.split))


def expression_row(item: Item, scores: dict) -> dict:
    return {"video_name": item.video, "exp_id": item.exp_id, "exp": item.info["exp"],
            "videxp": f"{item.video}_{item.exp_id}", **{k: scores[k] for k in ("J", "F", "JF", "A", "R")},
            "type_id": item.info["type_id"]}


# -- the functional interface of earlier versions (kept for scripts and tests) -------------


def load_expressions(data: Path, split: str = "valid") -> list[Item]:
    return ReVOS(data, split).load_items()


def evaluate(data: Path, preds: Path, expressions: list[Item] | None = None, workers: int | None = None) -> list[dict]:
    """Per-expression rows (in meta order) of PNG predictions, values as round(100·x, 2)."""
    from .base import prediction_source, score_items

    bench = ReVOS(data)
    items = bench.load_items()
    if expressions is not None:
        keep = {e.id for e in expressions}
        items = [i for i in items if i.id in keep]
    results = score_items(bench, items, prediction_source(bench, preds), workers or 1)
    return [expression_row(r.item, r.scores) for r in results]


def summarize(rows: list[dict]) -> dict:
    """Split means of the rounded per-expression values; JF = (J + F) / 2; overall = mean of splits."""
    out = {}
    for name, type_id in (("referring", 0), ("reason", 1)):
        sel = [r for r in rows if r["type_id"] == type_id]
        split = {k: float(np.array([r[k] for r in sel]).mean()) if sel else float("nan") for k in "JFAR"}
        split["JF"] = (split["J"] + split["F"]) / 2
        out[name] = split
    out["overall"] = {k: (out["referring"][k] + out["reason"][k]) / 2 for k in ("J", "F", "A", "R", "JF")}
    return out


def write_reports(rows: list[dict], summary: dict, out: Path, split: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / f"revos_{split}.json", out / f"revos_{split}.csv"
    json_path.write_text(json.dumps(summary, indent=4))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["video_name", "exp_id", "exp", "videxp", "J", "F", "JF", "A", "R",
                                               "type_id"])
        writer.writeheader()
        writer.writerows(rows)
    return json_path, csv_path
