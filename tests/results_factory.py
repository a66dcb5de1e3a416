"""Small results datasets written without a model: known masks on the example media."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unipixel_cli.output import ResultsWriter, rle_encode

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
H, W = 120, 160  # the example clips' size


def box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def obj(object_id: int, masks: list[np.ndarray], score: float, source: str = "seg") -> dict:
    return {"object_id": object_id, "source": source, "score": score, "masks": [rle_encode(m) for m in masks]}


def row(line: int, row_id: str, media: str, frames: list[int], objects: list[dict], task: str = "segment",
        answer: str = "It is [0] <|seg|>.", **extra) -> dict:
    path = EXAMPLES / media
    return {"id": row_id, "task": task, "line": line, "media": media, "media_path": str(path),
            "prompt": f"prompt of {row_id}", "answer": answer, "raw_answer": answer, "frame_indices": frames,
            "height": H, "width": W, "objects": objects, "status": "ok", "error": None,
            "timings": {"decode": 0.0, "llm": 0.0, "sam2": 0.0, "encode": 0.0}, **extra}


def error_row(line: int, row_id: str) -> dict:
    return {"id": row_id, "task": "segment", "line": line, "media": "missing.mp4", "prompt": "x",
            "status": "error", "error": f"line {line}: missing.mp4: file not found",
            "objects": [], "frame_indices": []}


# the masks each test compares against, built here independently of any export code
VIDEO_MASKS = {0: [box_mask(10, 10, 40, 30), box_mask(12, 10, 42, 30), np.zeros((H, W), bool)],
               1: [box_mask(100, 60, 150, 110), box_mask(98, 60, 148, 110), box_mask(96, 62, 146, 112)]}
IMAGE_MASKS = {3: [box_mask(50, 40, 90, 100)]}


def write_results(out: Path, manifest: Path | None = None, rows: list[dict] | None = None) -> Path:
    """Rows written out of manifest order across two part files, like a batched run finishing."""
    if rows is None:
        rows = [
            row(3, "img", "still.png", [0], [obj(3, IMAGE_MASKS[3], 0.75)]),
            error_row(2, "bad"),
            row(1, "vid", "clips/shapes0.mp4", [0, 5, 10],
                [obj(i, VIDEO_MASKS[i], 0.5 + 0.25 * i) for i in (0, 1)]),
        ]
    meta = {"manifest": str(manifest)} if manifest else {}
    writer = ResultsWriter(out, metadata=meta, flush_rows=2)
    for r in rows:
        writer.write(r)
    writer.close()
    return out


def write_manifest(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path
