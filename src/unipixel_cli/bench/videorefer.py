"""`unipixel bench videorefer-q` and `unipixel bench pixelqa`: VideoRefer-Bench-Q questions about
objects given as masks (VideoRefer-Q) or as points/boxes the model must segment first (PixelQA),
requested and scored like the authors' `infer_videorefer_q.py` / `infer_pixelqa.py` +
`eval_general.py` / `eval_pixelqa.py`.

Both read `VideoRefer-Bench-Q.json`. The "video" the LLM sees is the annotated frames of the item
(all of them up to 16; more are sampled uniformly and the prompt frame replaces the nearest
sample). `<objectN><region>` in the question becomes `[N]`; the j-th such mention is the j-th
annotation. Answers start after "The best option is (".
* VideoRefer-Q `single-frame`: each object's mask on the prompt frame only (their loader keeps a
  mask where `str(frame) == frame_idx`, so an integer `frame_idx` in the JSON gives no masks:
  such items cannot be requested here and score 0); pixels per frame 100·28·28 …
  144·28·28·⌊16/frames⌋.
* PixelQA `point` / `box`: the object's mask on the prompt frame, resized to SAM 2's 768², gives
  the prompt (SAM 2's `center` point: farthest from the mask border; or the mask's box); the
  model segments every object over the sampled frames (pre-fill), then answers from memory;
  pixels 128·28·28 … 256·28·28·⌊16/frames⌋. J, F (pixel F1 with 1e-6 epsilons, float32 as
  theirs) per object over the sampled frames, averaged over all objects of all items.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from pycocotools import mask as mask_utils

from ..output import rle_decode
from .base import BenchDataError, Item, ItemResult, Prediction, register
from .qa import QABenchmark, UnscorableAnswer, accuracy_summary

SAMPLE_FRAMES = 16
SAM2_IMAGE_SIZE = 768  # of the published checkpoints; prompts are sampled at this size as theirs
OBJECT_MENTION = re.compile(r"<object\d+><region>")


def keep_sampling(all_frames: list[int], frame_idx: int, sample_frames: int = SAMPLE_FRAMES) -> list[int]:
    """Positions in `all_frames`: all when few enough, else uniform with the prompt frame
    replacing the nearest sample (first one on a tie), as their load_frames_with_inds_keep."""
    n = len(all_frames)
    if n <= sample_frames:
        return list(range(n))
    inds = np.arange(0, n, (n - 1) / (sample_frames - 1))[:sample_frames].round().astype(int).tolist()
    keep = all_frames.index(frame_idx)
    dist = [abs(keep - i) for i in inds]
    inds[dist.index(min(dist))] = keep
    return inds


def to_rle(seg: dict) -> dict:
    """Any COCO RLE → compressed RLE with a string `counts` (our manifest's form)."""
    if isinstance(seg.get("counts"), list):
        seg = mask_utils.frPyObjects(seg, *seg["size"])
    counts = seg["counts"]
    return {"size": [int(s) for s in seg["size"]], "counts": counts.decode() if isinstance(counts, bytes) else counts}


def decode_seg(seg: dict | None, size: tuple[int, int]) -> np.ndarray:
    if seg is None:
        return np.zeros(size, bool)
    return rle_decode(to_rle(seg))


def mention_ids(prompt: str) -> list[str]:
    """Object ids in order of their `<objectN><region>` mentions; raises where theirs asserts."""
    ids = []
    for match in OBJECT_MENTION.findall(prompt):
        oid = match[7:-9]
        if oid != str(int(oid)):
            raise ValueError(f"object id {oid!r} is not a plain number")
        ids.append(oid)
    if not ids:
        raise ValueError("the question names no <objectN><region> (their inference asserts on it)")
    return ids


def replace_mentions(text: str, prompt: str) -> str:
    """`<objectN><region>` and then any other `<objectN>` → `[N]`, for every mention of `prompt`."""
    for match in OBJECT_MENTION.findall(prompt):
        oid, obj = match[7:-9], match[:-8]
        text = text.replace(match, f"[{oid}]").replace(obj, f"[{oid}]")
    return text


def pixel_jf(pred: torch.Tensor, gt: torch.Tensor) -> tuple[float, float]:
    """Their volume J and F: float32 counts, 1e-6 in every denominator."""
    p, g = pred.reshape(-1), gt.reshape(-1)
    inter = (p & g).sum().float()
    union = (p | g).sum().float()
    j = (inter / (union + 1e-6)).item()
    tp, fp, fn = inter, (p & ~g).sum().float(), (~p & g).sum().float()
    precision = tp / (tp + fp + 1e-6)
    recall = tp / (tp + fn + 1e-6)
    return j, (2 * precision * recall / (precision + recall + 1e-6)).item()


class _VideoReferBase(QABenchmark):
    layout = "<data>/VideoRefer-Bench-Q.json + <data>/videos/<video> (file or frame folder)"
    min_pixels = 100 * 28 * 28
    pixels_per_frame = 144 * 28 * 28

    def load_items(self) -> list[Item]:
        raw = self.load_json("VideoRefer-Bench-Q.json")
        if not isinstance(raw, list):
            raise BenchDataError(f"{self.data / 'VideoRefer-Bench-Q.json'}: expected a list of questions")
        items = []
        for k, entry in enumerate(raw):
            try:
                items.append(self.item(k, entry))
            except (KeyError, TypeError, IndexError) as e:
                raise BenchDataError(f"{self.data / 'VideoRefer-Bench-Q.json'}: question {k} lacks {e}") from e
        return items

    def item(self, k: int, entry: dict) -> Item:
        question = entry["Question"].strip()
        options = list(entry["options"])
        full = question + "\nOptions:" + "".join(f"\n{o}" for o in options)
        annotation = entry["annotation"]
        all_frames = sorted({int(f) for obj in annotation for f in obj})
        frame_idx = int(entry["frame_idx"])
        gt = {"options": options, "ans": entry["Answer"][1], "annotation": annotation, "frame_idx": frame_idx,
              "raw_frame_idx": entry["frame_idx"], "num_objects": len(annotation)}
        info = {"task": entry["type"], "media": entry["video"]}
        request = None
        try:
            if frame_idx not in all_frames:
                raise ValueError(f"prompt frame {frame_idx} is not an annotated frame")
            sampled = [all_frames[i] for i in keep_sampling(all_frames, frame_idx)]
            if len(sampled) < 2:
                raise ValueError("only one annotated frame (their inference needs a video)")
            gt["frames"] = sampled
            oids = mention_ids(full)
            if len(oids) != len(annotation):
                raise ValueError(f"{len(oids)} object mentions but {len(annotation)} annotated objects")
            request = {**self.media(entry["video"], sampled),
                       "question": replace_mentions(question, full),
                       "options": [replace_mentions(o, full) for o in options],
                       "objects": self.objects(oids, annotation, frame_idx, entry, sampled),
                       "min_pixels": self.min_pixels,
                       "max_pixels": self.pixels_per_frame * int(SAMPLE_FRAMES / len(sampled))}
            gt["oids"] = [int(o) for o in oids]
        except (ValueError, KeyError) as e:
            gt["error"] = f"no request: {e}"
            info["note"] = gt["error"]
        return Item(f"{k}", request, gt=gt, info=info)

    def media(self, video: str, frames: list[int]) -> dict:
        path = self.data / "videos" / video
        if path.is_dir():  # frame folder: files by the number in their name, as theirs
            names = sorted((p.name for p in path.iterdir() if p.name.endswith("jpg")),
                           key=lambda n: int(re.sub(r"^\D*", "", Path(n).stem)))
            return {"frames": str(path), "frame_files": names, "frame_indices": frames}
        return {"video": str(path), "frame_indices": frames}

    def objects(self, oids: list[str], annotation: list[dict], frame_idx: int, entry: dict,
                frames: list[int]) -> list[dict]:
        raise NotImplementedError


@register
class VideoReferQ(_VideoReferBase):
    name = "videorefer-q"
    title = "VideoRefer-Bench-Q"
    task = "pixelqa"
    splits = ("single-frame", "multi-frame")
    published = {"single-frame": {"Acc": (72.2, 73.4)}, "multi-frame": {"Acc": (72.8, 74.1)}}

    def objects(self, oids: list[str], annotation: list[dict], frame_idx: int, entry: dict,
                frames: list[int]) -> list[dict]:
        if self.split == "multi-frame":
            return self.mask_tracks(oids, annotation, frames)
        objects = []
        for oid, obj in zip(oids, annotation):
            # their single-frame masks: where str(frame) == the JSON's frame_idx (a string there)
            seg = next((v["segmentation"] for f, v in obj.items() if str(int(f)) == entry["frame_idx"]), None)
            if seg is None:
                raise ValueError(f"object {oid} has no mask on the prompt frame {entry['frame_idx']!r}")
            objects.append({"id": int(oid), "frame": frame_idx, "mask": to_rle(seg)})
        return objects

    @staticmethod
    def mask_tracks(oids: list[str], annotation: list[dict], frames: list[int]) -> list[dict]:
        """Every annotated mask of each object on the sampled frames (theirs drop the others);
        an empty mask adds nothing to memory, so it is left out."""
        objects = []
        for oid, obj in zip(oids, annotation):
            track = []
            for f in frames:
                seg = obj.get(str(f), {}).get("segmentation")
                if seg is not None and rle_decode(to_rle(seg)).any():
                    track.append({"id": int(oid), "frame": f, "mask": to_rle(seg)})
            if not track:
                raise ValueError(f"object {oid} has no mask on the sampled frames")
            objects += track
        return objects


def sam2_prompt(mask: np.ndarray, kind: str) -> list[float]:
    """The authors' PixelQA prompt from a ground-truth mask, in original pixels: SAM 2's
    `center` point or the mask's box, sampled on the mask resized to 768² (bilinear, > 0)."""
    from sam2.modeling.sam2_utils import sample_box_points, sample_one_point_from_error_center

    h, w = mask.shape
    area = TF.resize(torch.from_numpy(mask.astype(np.float32))[None, None], [SAM2_IMAGE_SIZE] * 2) > 0
    if kind == "point":
        coords, _ = sample_one_point_from_error_center(area, None)
    else:
        coords, _ = sample_box_points(area, noise=-1)
    xy = coords.reshape(-1, 2).tolist()
    out = []
    for x, y in xy:
        out += [x * w / SAM2_IMAGE_SIZE, y * h / SAM2_IMAGE_SIZE]
    return out


@register
class PixelQA(_VideoReferBase):
    name = "pixelqa"
    title = "PixelQA"
    task = "pixelqa"
    splits = ("point", "box")
    metrics = ("correct", "failed", "J", "F", "objects")
    min_pixels = 128 * 28 * 28
    pixels_per_frame = 256 * 28 * 28
    published = {}  # not in the authors' README table

    def objects(self, oids: list[str], annotation: list[dict], frame_idx: int, entry: dict,
                frames: list[int]) -> list[dict]:
        objects = []
        for oid, obj in zip(oids, annotation):
            seg = obj.get(str(frame_idx), {}).get("segmentation")
            if seg is None:
                raise ValueError(f"object {oid} has no mask on the prompt frame {frame_idx}")
            prompt = sam2_prompt(rle_decode(to_rle(seg)), self.split)
            objects.append({"id": int(oid), "frame": frame_idx, self.split: prompt})
        return objects

    def score(self, item: Item, prediction: Prediction) -> dict:
        j_values, f_values = self.jf_values(item, prediction)
        try:
            qa = super().score(item, prediction)
        except UnscorableAnswer as e:
            # their eval_general stops here, eval_pixelqa still scores the masks: so do we, and
            # the answer is counted wrong and listed under "unscorable_answers"
            qa = {"correct": 0.0, "failed": 1.0, "answer_error": str(e)}
        return {**qa, "J": float(np.mean(j_values)), "F": float(np.mean(f_values)), "objects": len(j_values),
                "j_values": j_values, "f_values": f_values}

    def jf_values(self, item: Item, prediction: Prediction) -> tuple[list[float], list[float]]:
        gt, row = item.gt, prediction.row
        if row is None or "frames" not in gt:
            raise ValueError("no predicted masks")
        where = {int(f): t for t, f in enumerate(row["frame_indices"])}
        by_id = {int(o["object_id"]): o for o in row["objects"]}
        j_values, f_values = [], []
        for oid, obj in zip(gt["oids"], gt["annotation"]):
            if oid not in by_id:
                raise ValueError(f"no predicted mask for object {oid}")
            masks = by_id[oid]["masks"]
            pred = np.stack([rle_decode(masks[where[f]]) for f in gt["frames"]])
            size = pred.shape[1:]
            segs = {int(f): v.get("segmentation") for f, v in obj.items()}
            truth = np.stack([decode_seg(segs.get(f), size) for f in gt["frames"]])
            if truth.shape != pred.shape:
                raise ValueError(f"mask size {pred.shape[1:]} differs from the annotation's {truth.shape[1:]}")
            j, f = pixel_jf(torch.from_numpy(pred), torch.from_numpy(truth))
            j_values.append(j)
            f_values.append(f)
        return j_values, f_values

    def zero_scores(self, item: Item) -> dict:
        n = item.gt.get("num_objects", 0)
        return {"correct": 0.0, "failed": 1.0, "J": 0.0, "F": 0.0, "objects": n,
                "j_values": [0.0] * n, "f_values": [0.0] * n}

    def summarize(self, results: list[ItemResult]) -> dict:
        """eval_general's accuracy table + eval_pixelqa's J, F over every object of every item."""
        j_values = [j for r in results for j in r.scores["j_values"]]
        f_values = [f for r in results for f in r.scores["f_values"]]
        avg_j = sum(j_values) / len(j_values) if j_values else 0.0
        avg_f = sum(f_values) / len(f_values) if f_values else 0.0
        unscorable = [{"id": r.item.id, "error": r.scores["answer_error"]}
                      for r in results if "answer_error" in r.scores]
        return {**accuracy_summary(results), "J": 100 * avg_j, "F": 100 * avg_f, "J&F": (avg_j + avg_f) / 2 * 100,
                "unscorable_answers": unscorable}

    def table(self, summary: dict) -> list[tuple[str, dict[str, float]]]:
        rows = super().table(summary)
        return rows[:-1] + [("all", {"Acc": summary["all"]["Acc"], "J": summary["J"], "F": summary["F"],
                                     "J&F": summary["J&F"]})]
