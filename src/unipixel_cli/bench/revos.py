"""`unipixel bench revos`: ReVOS (reasoning video object segmentation) run and scored like the
authors (dataset layout of the ReVOS release, prompts of their `infer_seg.py`, metrics of
their `eval_revos.py`)."""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..media import natural_key
from ..output import rle_decode
from .revos_metrics import expression_scores, rounded

SPLIT_FILES = {"valid": "meta_expressions_valid_.json"}


class RevosDataError(Exception):
    pass


@dataclass
class Expression:
    video: str
    exp_id: str
    exp: str
    type_id: int
    anno_ids: list
    frames: list[str]

    @property
    def videxp(self) -> str:
        return f"{self.video}_{self.exp_id}"

    @property
    def row_id(self) -> str:
        return f"{self.video}::{self.exp_id}"


def revos_prompt(exp: str, num_frames: int) -> str:
    """The authors' ReVOS prompt: a sentence for questions, a template for referring phrases."""
    text = exp.strip()
    if text.endswith("?"):
        return f"{text} Please provide the segmentation mask."
    query = text.strip(".")
    query = query[:1].lower() + query[1:]
    for prefix in ("the ", "an ", "a "):
        if query.startswith(prefix):
            query = query[len(prefix):]
    media = "image" if num_frames == 1 else "video"
    return f"Please segment the {query} in this {media}."


def load_expressions(data: Path, split: str = "valid") -> list[Expression]:
    meta_path = data / SPLIT_FILES.get(split, f"meta_expressions_{split}_.json")
    if not meta_path.exists():
        raise RevosDataError(f"{meta_path} not found (expected the ReVOS release layout)")
    videos = json.loads(meta_path.read_text())["videos"]
    out = []
    for video, v in videos.items():
        for exp_id, e in v["expressions"].items():
            out.append(Expression(video, str(exp_id), e["exp"], int(e["type_id"]), list(e.get("anno_id") or []),
                                  list(v["frames"])))
    return out


def frame_dir(data: Path, video: str) -> Path:
    for cand in (data / "JPEGImages" / video, data / video):
        if cand.is_dir():
            return cand
    raise RevosDataError(f"frames of video {video!r} not found under {data}/JPEGImages or {data}")


def write_manifest(data: Path, expressions: list[Expression], path: Path, sample_frames: int = 16) -> Path:
    """One segment request per expression: LLM on 16 sampled frames, SAM 2 over all frames."""
    rows = []
    for e in expressions:
        rows.append({"id": e.row_id, "frames": str(frame_dir(data, e.video)),
                     "prompt": revos_prompt(e.exp, len(e.frames)), "propagate": "all", "sample_frames": sample_frames})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def export_pngs(results, expressions: list[Expression], data: Path, out: Path) -> None:
    """Our results in the authors' layout `<out>/<video>/<exp_id>/<frame>.png` (0/255).

    As the authors do, only the first `<|seg|>` object is scored, and a request that failed
    or produced no mask is written as empty masks.
    """
    by_id = {r["id"]: r for r in results}
    sizes: dict[str, tuple[int, int]] = {}  # frame size per video, for requests without masks
    for e in expressions:
        folder = out / e.video / e.exp_id
        folder.mkdir(parents=True, exist_ok=True)
        row = by_id.get(e.row_id)
        objects = row["objects"] if row is not None and row["status"] == "ok" else []
        masks = list(objects[0]["masks"]) if len(objects) else []
        if len(masks) < len(e.frames) and e.video not in sizes:
            files = sorted(frame_dir(data, e.video).iterdir(), key=lambda p: natural_key(p.name))
            sizes[e.video] = Image.open(files[0]).size[::-1] if files else (1, 1)
        for i, name in enumerate(e.frames):
            m = rle_decode(masks[i]) if i < len(masks) else np.zeros(sizes[e.video], bool)
            Image.fromarray(m.astype(np.uint8) * 255, mode="L").save(folder / f"{name}.png")


# -- evaluation ---------------------------------------------------------------------------
_STATE: dict = {}


def _score(e: Expression) -> tuple[float, float, float, float]:
    preds, masks, foreground = _STATE["preds"], _STATE["masks"], _STATE["foreground"]
    try:
        folder = preds / e.video
        if not folder.exists():
            return 0.0, 0.0, 0.0, 0.0
        first = np.asarray(Image.open(folder / e.exp_id / f"{e.frames[0]}.png").convert("L"))
        h, w = first.shape
        n = len(e.frames)
        gt = np.zeros((n, h, w), np.uint8)
        pred = np.zeros((n, h, w), np.uint8)
        fg = np.zeros((n, h, w), np.uint8)
        for t, name in enumerate(e.frames):
            for anno_id in e.anno_ids:
                rle = masks[str(anno_id)][t]
                if rle:
                    gt[t] += mask_utils.decode(rle)
            f = mask_utils.decode(foreground[e.video]["masks_rle"][t])  # a list of RLEs gives [H, W, n]
            fg[t] = f.sum(axis=2).astype(np.uint8) if f.ndim == 3 else f.astype(np.uint8)
            pred[t] = np.asarray(Image.open(folder / e.exp_id / f"{name}.png").convert("L"))
        return expression_scores(gt, pred, fg)
    except Exception:
        # the authors' evaluator scores any missing file, size mismatch or decode error as 0
        return 0.0, 0.0, 0.0, 0.0


def evaluate(data: Path, preds: Path, expressions: list[Expression], workers: int | None = None) -> list[dict]:
    """Per-expression rows (in meta order), values as round(100·x, 2)."""
    _STATE.update(preds=Path(preds),
                  masks=json.loads((data / "mask_dict.json").read_text()),
                  foreground=json.loads((data / "mask_dict_foreground.json").read_text()))
    workers = workers or min(8, os.cpu_count() or 1)
    if workers > 1 and len(expressions) > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            scores = pool.map(_score, expressions, chunksize=max(1, len(expressions) // (4 * workers)))
    else:
        scores = [_score(e) for e in expressions]
    rows = []
    for e, (j, f, a, r) in zip(expressions, scores):
        rows.append({"video_name": e.video, "exp_id": e.exp_id, "exp": e.exp, "videxp": e.videxp,
                     "J": rounded(j), "F": rounded(f), "JF": float(np.round(100 * (np.float64(j) + f) / 2, 2)),
                     "A": rounded(a),
                     "R": rounded(r), "type_id": e.type_id})
    return rows


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
