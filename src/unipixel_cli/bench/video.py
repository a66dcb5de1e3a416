"""Video segmentation benchmarks scored like the authors' `eval_seg.py` (MeViS, Ref-YouTube-VOS,
Ref-DAVIS17, Ref-SAV) and `eval_groundmore.py` (GroundMoRe); ReVOS lives in `revos.py`.

Requests follow their `infer_seg.py`: the video is the frame list of the dataset's
meta file (never a folder listing), 16 uniformly sampled frames go to the LLM, SAM 2
propagates over every listed frame, and the first `<|seg|>` object is the prediction.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .base import BenchDataError, Benchmark, Item, ItemResult, Prediction, mean, register, safe_load_pickle, zip_folder
from .revos_metrics import boundary_f, region_j

SAMPLE_FRAMES = 16  # LLM frames of the authors' infer_seg.py (--sample_frames 16)


def query_prompt(text: str, num_frames: int) -> str:
    """The authors' 'query' template: strip dots, lower the first letter, drop one leading
    'the ', 'an ' and 'a ' (checked in that order), then 'Please segment the … in this video.'"""
    query = text.strip(".")
    query = query[:1].lower() + query[1:]
    for prefix in ("the ", "an ", "a "):
        if query.startswith(prefix):
            query = query[len(prefix):]
    media = "image" if num_frames == 1 else "video"
    return f"Please segment the {query} in this {media}."


def frame_request(folder: Path, frames: list[str], prompt: str, ext: str = ".jpg") -> dict:
    """A segment request over exactly the listed frame files (a stray file in the folder
    cannot shift them), LLM on 16 sampled frames, SAM 2 over all of them."""
    return {"frames": str(folder), "frame_files": [f"{n}{ext}" for n in frames], "prompt": prompt,
            "propagate": "all", "sample_frames": SAMPLE_FRAMES}


def frame_values(gt: np.ndarray, pred: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-frame J (IoU, 1 when both empty) and F (DAVIS boundary F, bound_th 0.008)."""
    return [region_j(g, p) for g, p in zip(gt, pred)], [boundary_f(g, p) for g, p in zip(gt, pred)]


# -- eval_seg.py family -------------------------------------------------------------------


class SegEval(Benchmark):
    """J, F, J&F exactly as `eval_seg.py`: per expression, the mean over every listed frame of
    J and F between the uint8 sum of its annotation masks and the raw 8-bit PNG (nonzero =
    foreground); summary = round(100·mean over expressions, 2), J&F from the unrounded means."""

    metrics = ("J", "F")
    png_layout = True
    frames_root: tuple[str, ...] = ()  # where <video>/<frame>.jpg lives, relative to --data

    def video_items(self, videos: dict, prompt) -> list[Item]:
        items = []
        for video, v in videos.items():
            frames = [str(n) for n in v["frames"]]
            folder = self.data.joinpath(*self.frames_root, video)
            for exp_id, e in v["expressions"].items():
                items.append(Item(f"{video}::{exp_id}", frame_request(folder, frames, prompt(e, frames)), video,
                                  str(exp_id), frames, gt=[str(a) for a in e.get("anno_id") or []],
                                  info={"exp": e.get("exp", "")}))
        return items

    def score(self, item: Item, prediction: Prediction) -> dict[str, float]:
        masks = prediction.masks
        h, w = prediction.frame_size(item.frames[0])
        n = len(item.frames)
        gt = np.zeros((n, h, w), np.uint8)
        pred = np.zeros((n, h, w), np.uint8)
        for t, name in enumerate(item.frames):
            for anno_id in item.gt:
                rle = self.mask_dict[anno_id][t]
                if rle:
                    gt[t] += mask_utils.decode(rle)  # a mis-sized mask raises: scored 0
            p = masks.read(name)
            if p is None:
                raise FileNotFoundError(f"no prediction for frame {name}")
            pred[t] = p
        j, f = frame_values(gt, pred)
        return {"J": float(np.mean(j)), "F": float(np.mean(f))}

    def summarize(self, results: list[ItemResult]) -> dict:
        j = mean(r.scores["J"] for r in results)
        f = mean(r.scores["F"] for r in results)
        return {"J": round(100 * j, 2), "F": round(100 * f, 2), "J&F": round(100 * float((j + f) / 2), 2)}

    def table(self, summary: dict) -> list[tuple[str, dict[str, float]]]:
        return [(self.split, {k: summary[k] for k in ("J", "F", "J&F")})]


class SubmissionMixin:
    """Splits without public masks: our PNGs zipped for the benchmark's CodaLab server.
    Ref-YouTube-VOS takes `Annotations/<video>/<exp_id>/<frame>.png` (ReferFormer's
    `zip -r submission.zip Annotations`); MeViS takes `<video>/<exp_id>/<frame>.png` at the
    zip root (the MeViS baseline's `cd inference && zip -r submission.zip ./*`)."""

    submission_prefix = ""

    def submission(self, predictions, items: list[Item], out: Path) -> Path | None:
        from .base import export_pngs

        folder = out / "submission"
        export_pngs(items, predictions, folder)
        return zip_folder(folder, out / f"{self.name}_{self.split}_submission.zip", prefix=self.submission_prefix)


@register
class MeViS(SubmissionMixin, SegEval):
    name = "mevis"
    title = "MeViS"
    splits = ("valid_u", "valid")
    layout = ("valid_u/{meta_expressions.json, mask_dict.json, JPEGImages/<video>/<frame>.jpg}; "
              "valid/{meta_expressions.json, JPEGImages/} (no public masks: submission zip)")
    published = {"valid": {"J": (50.4, 53.2), "F": (55.7, 58.3), "J&F": (53.1, 55.8)}}

    def has_ground_truth(self) -> bool:
        return self.split == "valid_u"

    def load_items(self) -> list[Item]:
        self.frames_root = (self.split, "JPEGImages")
        videos = self.load_json(self.split, "meta_expressions.json")["videos"]
        if self.has_ground_truth():
            self.mask_dict = self.load_json(self.split, "mask_dict.json")
        return self.video_items(videos, lambda e, frames: query_prompt(e["exp"].strip(), len(frames)))


@register
class RefYouTubeVOS(SubmissionMixin, SegEval):
    name = "ref-youtube-vos"
    title = "Ref-YouTube-VOS"
    splits = ("valid",)
    layout = "meta_expressions/valid/meta_expressions.json, valid/JPEGImages/<video>/<frame>.jpg (submission zip)"
    published = {"valid": {"J": (68.6, 69.5), "F": (72.3, 72.4), "J&F": (70.5, 71.0)}}
    submission_prefix = "Annotations/"

    def has_ground_truth(self) -> bool:
        return False  # the valid masks are held by the evaluation server

    def load_items(self) -> list[Item]:
        self.frames_root = (self.split, "JPEGImages")
        videos = self.load_json("meta_expressions", self.split, "meta_expressions.json")["videos"]
        return self.video_items(videos, lambda e, frames: query_prompt(e["exp"].strip(), len(frames)))


@register
class RefDAVIS17(SegEval):
    name = "ref-davis17"
    title = "Ref-DAVIS17"
    splits = ("valid",)
    layout = "meta_expressions/valid/meta_expressions.json, valid/mask_dict.pkl, DAVIS/JPEGImages/480p/<video>/"
    published = {"valid": {"J": (70.7, 72.7), "F": (77.8, 80.1), "J&F": (74.2, 76.4)}}

    def load_items(self) -> list[Item]:
        self.frames_root = ("DAVIS", "JPEGImages", "480p")
        videos = self.load_json("meta_expressions", self.split, "meta_expressions.json")["videos"]
        self.mask_dict = safe_load_pickle(self.file(self.split, "mask_dict.pkl"))
        if not isinstance(self.mask_dict, dict):
            raise BenchDataError(f"{self.data}/{self.split}/mask_dict.pkl: expected a dict of mask lists")
        # their evaluator numbers expressions over *sorted* video names and *string-sorted*
        # expression ids ("10" before "2"), whatever the order of the meta file
        numbering, count = {}, 0
        for video in sorted(videos):
            for exp_id in sorted(videos[video]["expressions"]):
                numbering[(video, exp_id)] = count
                count += 1
        for video, v in videos.items():
            for exp_id, e in v["expressions"].items():
                e["anno_id"] = [numbering[(video, exp_id)]]
        return self.video_items(videos, lambda e, frames: query_prompt(e["exp"].strip(), len(frames)))


@register
class RefSAV(SegEval):
    name = "ref-sav"
    title = "Ref-SAV"
    splits = ("valid",)
    layout = "valid/meta_expressions_valid.json, valid/mask_dict.json, valid/videos/<video>/<frame>.jpg"
    published = {"valid": {"J": (66.9, 68.5), "F": (67.6, 69.6), "J&F": (67.2, 69.0)}}

    def load_items(self) -> list[Item]:
        self.frames_root = (self.split, "videos")
        videos = self.load_json(self.split, "meta_expressions_valid.json")["videos"]
        self.mask_dict = self.load_json(self.split, "mask_dict.json")
        return self.video_items(
            videos, lambda e, frames: f"Please segment the object according to the description: {e['exp'].strip()}")


# -- GroundMoRe -----------------------------------------------------------------------------

GROUNDMORE_FRAMES = 20
Q_TYPES = ("Causal", "Sequential", "Counterfactual", "Descriptive")


def number_key(stem: str) -> int:
    """Their sort key: the integer after the leading non-digits ('frame_000012' → 12)."""
    return int(re.sub(r"^\D*", "", stem))


def seconds(clock: str) -> int:
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return parts[0] * 3600 + parts[1] * 60 + parts[2]


@register
class GroundMoRe(Benchmark):
    """GroundMoRe test as `eval_groundmore.py`: 20 frames by linspace, gt inside the action
    window only (6 fps clock from the clip name), J/F means per question and per q_type."""

    name = "groundmore"
    title = "GroundMoRe"
    splits = ("test",)
    layout = "test_v2.json, annotations/<video>/images/<frame>.jpg, annotations/<video>/masks/<frame>.png"
    published = {"test": {"J": (36.0, 36.5), "F": (38.7, 39.1), "J&F": (37.4, 37.8)}}
    metrics = ("J", "F")
    png_layout = True

    def load_items(self) -> list[Item]:
        videos = self.load_json("test_v2.json")["videos"]
        items = []
        for video, meta in videos.items():
            root = self.data / "annotations" / video
            image_dir = root / "images"
            names = [p.name for p in image_dir.iterdir()] if image_dir.is_dir() else []
            jpgs = [n for n in names if n.endswith("jpg") and not n.startswith(".")]
            stems = sorted((n.rsplit(".", 1)[0] for n in jpgs), key=number_key) if jpgs else []
            keep = np.linspace(0, len(stems) - 1, num=GROUNDMORE_FRAMES, dtype=int) if stems else []
            frames = [stems[i] for i in keep]
            for exp_id, q in meta["questions"].items():
                query = q["question"].strip()
                query = query if query.endswith("?") else query + "?"
                request = None
                if frames:
                    request = frame_request(image_dir, frames,
                                            f"{query} Please answer the question and provide the segmentation mask.")
                gt = {"video": video, "num_images": len(jpgs), "has_frm": bool(stems) and stems[0].startswith("frame_"),
                      "obj_id": q["obj_id"], "start": q["action_start"], "end": q["action_end"]}
                items.append(Item(f"{video}::{exp_id}", request, video, str(exp_id), frames, gt=gt,
                                  info={"exp": q["question"], "q_type": q["q_type"]}))
        return items

    def score(self, item: Item, prediction: Prediction) -> dict[str, float]:
        g = item.gt
        if g["num_images"] == 0:
            raise FileNotFoundError(f"{self.data}/annotations/{g['video']}/images: no frames")
        masks = prediction.masks
        present = sorted(masks.names(), key=number_key)
        if not present:
            raise FileNotFoundError("no predicted masks")
        first = masks.read(present[0])
        h, w = first.shape
        obj_id = int(g["obj_id"])  # "1, 2" raises, as in their evaluator: scored 0
        clip_start = g["video"][-9:].split("_")[0]
        clip_start = seconds(clip_start[:2] + ":" + clip_start[2:])
        start = (seconds(g["start"]) - clip_start) * 6  # 6 fps
        end = (seconds(g["end"]) - clip_start) * 6 - 1
        indices = np.linspace(0, g["num_images"] - 1, num=GROUNDMORE_FRAMES, dtype=int)
        pred = np.zeros((len(indices), h, w), np.uint8)
        gt = []
        for t, index in enumerate(indices):
            # masks are looked up by the sample *index*, not by the sampled file's name
            stem = f"frame_{index:06d}" if g["has_frm"] else f"{index:07d}"
            p = masks.read(stem)
            if p is not None:  # a missing frame is an empty mask in their evaluator
                pred[t] = p
            path = self.data / "annotations" / g["video"] / "masks" / f"{stem}.png"
            if start <= index <= end and path.is_file():
                with Image.open(path) as img:
                    gt.append(np.asarray(img.convert("P")) == obj_id)
            else:
                gt.append(np.zeros((h, w), bool))
        gt_stack = np.stack(gt)  # a mask of another size raises: scored 0
        if gt_stack.shape != pred.shape:
            raise ValueError(f"prediction size {w}x{h} differs from the mask size")
        j, f = frame_values(gt_stack, pred > 0)
        return {"J": float(np.nanmean(j)), "F": float(np.nanmean(f))}

    def summarize(self, results: list[ItemResult]) -> dict:
        out = {"final_J": mean(r.scores["J"] for r in results), "final_F": mean(r.scores["F"] for r in results)}
        out["final_JF"] = (out["final_J"] + out["final_F"]) / 2
        for q in Q_TYPES:
            sel = [r for r in results if r.item.info["q_type"] == q]
            key = q.lower()
            out[f"final_{key}_J"] = mean(r.scores["J"] for r in sel)
            out[f"final_{key}_F"] = mean(r.scores["F"] for r in sel)
            out[f"final_{key}_JF"] = (out[f"final_{key}_J"] + out[f"final_{key}_F"]) / 2
        return out

    def table(self, summary: dict) -> list[tuple[str, dict[str, float]]]:
        rows = [("test", "final")] + [(q, f"final_{q.lower()}") for q in Q_TYPES]
        return [(label, {"J": 100 * summary[f"{k}_J"], "F": 100 * summary[f"{k}_F"], "J&F": 100 * summary[f"{k}_JF"]})
                for label, k in rows]
