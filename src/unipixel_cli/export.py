"""Results that travel: the masks of a results dataset in the formats other tools read.

* `coco`: one COCO-style JSON; every mask frame is an image, every non-empty mask an
  annotation with its compressed RLE, `score`, `request_id` and `object_id`.
* `png`: per-frame mask PNGs, `<id>/<object_id>/<frame>.png` (0/255, the layout the authors'
  evaluation scripts write), and with `palette` one indexed PNG per frame, `<id>/<frame>.png`
  (DAVIS annotations: pixel = object_id + 1, 0 = background).
* `fiftyone`: a FiftyOne dataset (video samples with per-frame `Detections`, image samples for
  images and frame folders), when the `fiftyone` package is installed.

Results are read through `output.read_results`, so exports hold the current rows only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from . import __version__
from .media import IMAGE_EXTS, natural_key
from .output import read_results, rle_decode, run_metadata

FORMATS = ("coco", "png", "fiftyone")
PNG_STYLES = ("objects", "palette")


class ExportError(Exception):
    """The export cannot run (no results, missing optional package…); one line for the user."""


def load_results(results_dir: Path):
    """The current rows of a results dataset; a missing or empty dataset is an `ExportError`."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ExportError(f"{results_dir}: no such results directory")
    try:
        df = read_results(results_dir)
    except Exception as e:  # a folder that is not a dataset raises pyarrow errors of many kinds
        raise ExportError(f"{results_dir}: cannot read the results dataset ({e})") from e
    if df.empty:
        raise ExportError(f"{results_dir}: holds no results (no part-*.parquet files); "
                          "run `unipixel segment` or `unipixel pixelqa` with -o pointing here first")
    if "line" in df.columns:  # manifest order, whatever order the parts were written in
        df = df.sort_values("line", kind="stable", na_position="last").reset_index(drop=True)
    return df


def safe_name(request_id: str) -> str:
    """A file-system name for an id: kept when plain, percent-encoded otherwise (so two ids never
    collide and `a/b` or `..` never leave the export folder)."""
    name = quote(request_id, safe="-_.")
    return name.replace(".", "%2E") if name in (".", "..") or not name else name


def frame_name(frame_index: int) -> str:
    return f"{frame_index:05d}"


@dataclass(frozen=True)
class MaskFrame:
    """One object's mask on one frame of one request."""

    request_id: str
    object_id: int
    frame_index: int
    score: float
    rle: dict


def ok_rows(df) -> Iterator[dict]:
    for row in df.to_dict("records"):
        if row["status"] == "ok" and len(row["frame_indices"]):
            yield row


def mask_frames(row: dict) -> Iterator[MaskFrame]:
    for obj in row["objects"]:
        for t, rle in enumerate(obj["masks"]):
            yield MaskFrame(str(row["id"]), int(obj["object_id"]), int(row["frame_indices"][t]),
                            float(obj["score"]), {"size": [int(s) for s in rle["size"]], "counts": rle["counts"]})


# -- COCO ------------------------------------------------------------------------------------

def coco_dict(df, results_dir: Path) -> dict:
    """COCO-style dict: images = mask frames, annotations = non-empty masks (RLE) per object."""
    images, annotations = [], []
    for row in ok_rows(df):
        image_ids = {}
        for frame in row["frame_indices"]:
            image_ids[int(frame)] = len(images) + 1
            images.append({"id": len(images) + 1, "file_name": f"{safe_name(str(row['id']))}/{frame_name(frame)}",
                           "height": int(row["height"]), "width": int(row["width"]),
                           "request_id": str(row["id"]), "frame_index": int(frame),
                           "media": row["media"], "media_path": row["media_path"]})
        for m in mask_frames(row):
            coco_rle = {"size": m.rle["size"], "counts": m.rle["counts"].encode()}
            area = float(mask_utils.area(coco_rle))
            if area == 0:  # the object is absent on this frame: COCO has no empty annotations
                continue
            annotations.append({"id": len(annotations) + 1, "image_id": image_ids[m.frame_index],
                                "category_id": 1, "segmentation": m.rle, "area": area,
                                "bbox": [float(v) for v in mask_utils.toBbox(coco_rle)], "iscrowd": 0,
                                "score": m.score, "request_id": m.request_id, "object_id": m.object_id})
    return {"info": {"description": f"unipixel results from {results_dir}", "version": __version__,
                     "unipixel": run_metadata(results_dir)},
            "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "object", "supercategory": "object"}]}


def export_coco(df, results_dir: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "annotations.json"
    path.write_text(json.dumps(coco_dict(df, results_dir)), encoding="utf-8")
    return path


# -- PNG -------------------------------------------------------------------------------------

def palette() -> list[int]:
    """DAVIS palette: the colour map of the DAVIS annotations (bit-interleaved, 256 entries)."""
    colours = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours += [r, g, b]
    return colours


def export_png(df, out_dir: Path, style: str = "objects") -> Path:
    """`objects`: `<id>/<object_id>/<frame>.png` (0/255 L). `palette`: `<id>/<frame>.png`
    (P mode, pixel = object_id + 1; where objects overlap the later object in the row wins)."""
    if style not in PNG_STYLES:
        raise ExportError(f"--png-style must be one of {', '.join(PNG_STYLES)}, got {style!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for row in ok_rows(df):
        folder = out_dir / safe_name(str(row["id"]))
        if style == "objects":
            for m in mask_frames(row):
                (folder / str(m.object_id)).mkdir(parents=True, exist_ok=True)
                img = Image.fromarray(rle_decode(m.rle).astype(np.uint8) * 255, mode="L")
                img.save(folder / str(m.object_id) / f"{frame_name(m.frame_index)}.png")
            continue
        if any(int(o["object_id"]) > 254 for o in row["objects"]):
            raise ExportError(f"request {row['id']}: object ids above 254 do not fit an indexed PNG; "
                              "use --png-style objects")
        folder.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(row["frame_indices"]):
            label = np.zeros((int(row["height"]), int(row["width"])), np.uint8)
            for obj in row["objects"]:
                if t < len(obj["masks"]):
                    label[rle_decode(obj["masks"][t])] = int(obj["object_id"]) + 1
            img = Image.fromarray(label, mode="P")
            img.putpalette(palette())
            img.save(folder / f"{frame_name(int(frame))}.png")
    return out_dir


# -- FiftyOne --------------------------------------------------------------------------------

def _import_fiftyone():
    try:
        import fiftyone as fo
    except ImportError as e:
        raise ExportError("--format fiftyone needs the fiftyone package: `pip install fiftyone` "
                          "(or `uv pip install fiftyone`) in this environment") from e
    return fo


def frame_files(folder: Path) -> list[Path]:
    """The frames of a frame folder in the order `media.open_media` reads them."""
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=lambda p: natural_key(p.name))


def _detections(fo, row: dict, t: int):
    dets = []
    for obj in row["objects"]:
        if t >= len(obj["masks"]):
            continue
        mask = rle_decode(obj["masks"][t])
        if not mask.any():
            continue
        det = fo.Detection.from_mask(mask, label="object")
        det.confidence = float(obj["score"])
        det["object_id"] = int(obj["object_id"])
        det["request_id"] = str(row["id"])
        det.index = int(obj["object_id"])  # FiftyOne's own object-track id
        dets.append(det)
    return fo.Detections(detections=dets)


def fiftyone_samples(fo, df) -> list:
    samples = []
    for row in ok_rows(df):
        path = Path(row["media_path"])
        frames = [int(f) for f in row["frame_indices"]]
        common = {"request_id": str(row["id"]), "prompt": row["prompt"], "answer": row["answer"]}
        if path.is_dir():  # a frame folder: one image sample per mask frame
            files = frame_files(path)
            for t, f in enumerate(frames):
                samples.append(fo.Sample(filepath=str(files[f]), frame_index=f, detections=_detections(fo, row, t),
                                         **common))
        elif len(frames) == 1 and path.suffix.lower() in IMAGE_EXTS:
            samples.append(fo.Sample(filepath=str(path), frame_index=0, detections=_detections(fo, row, 0), **common))
        else:  # a video: FiftyOne frame numbers are 1-based
            sample = fo.Sample(filepath=str(path), **common)
            for t, f in enumerate(frames):
                sample.frames[f + 1] = fo.Frame(detections=_detections(fo, row, t))
            samples.append(sample)
    return samples


def export_fiftyone(df, out_dir: Path, name: str | None = None) -> Path:
    """Build a FiftyOne dataset and write it to `out_dir` as a `FiftyOneDataset` (media linked,
    not copied); load it back with `fo.Dataset.from_dir(out_dir, dataset_type=fo.types.FiftyOneDataset)`."""
    fo = _import_fiftyone()
    try:
        dataset = fo.Dataset(name)
    except Exception as e:  # FiftyOne keeps datasets in MongoDB, which it starts or downloads itself
        raise ExportError(f"FiftyOne could not open its database: {' '.join(str(e).split())}") from e
    try:
        dataset.add_samples(fiftyone_samples(fo, df))
        dataset.export(export_dir=str(out_dir), dataset_type=fo.types.FiftyOneDataset, export_media=False)
    finally:
        dataset.delete()
    return out_dir


def is_results_dataset(path: Path) -> bool:
    """A folder holding part files: writing anything else into it breaks `pd.read_parquet(dir)`."""
    return Path(path).is_dir() and any(Path(path).glob("part-*.parquet"))


def refuse_results_dataset(out_dir: Path, what: str) -> None:
    if is_results_dataset(out_dir):
        raise ExportError(f"{out_dir} is a results dataset (it holds part-*.parquet); write the {what} "
                          "to another folder, e.g. -o review/")


@dataclass(frozen=True)
class ExportSummary:
    path: Path
    requests: int  # ok rows exported
    skipped: int  # error rows (no masks to export)


def export_results(results_dir: Path, out_dir: Path, fmt: str, png_style: str = "objects") -> ExportSummary:
    """Export the current rows of a results dataset in `fmt` under `out_dir`."""
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if png_style not in PNG_STYLES:
        raise ExportError(f"--png-style must be one of {', '.join(PNG_STYLES)}, got {png_style!r}")
    refuse_results_dataset(out_dir, "export")
    if fmt == "fiftyone":
        _import_fiftyone()  # fail before reading anything
    df = load_results(results_dir)
    exported = sum(1 for _ in ok_rows(df))
    if fmt == "coco":
        path = export_coco(df, results_dir, out_dir)
    elif fmt == "png":
        path = export_png(df, out_dir, png_style)
    else:
        path = export_fiftyone(df, out_dir)
    return ExportSummary(path, exported, len(df) - exported)
