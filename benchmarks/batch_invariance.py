"""Does batching change a row's output? Runs the same rows at batch 1, at batch N and at batch N
with the manifest shuffled, through the engine, and compares every row with its batch-1 result.

    uv run python benchmarks/batch_invariance.py [--dtype bf16] [--batch-size 8] [--model DIR]

Rows: the segmentation cases of the conformance fixture (root and sub-fixtures) and the
example manifests (`examples/videos.jsonl`, `examples/prompts.jsonl`). Prints, per setting, the
share of rows whose generated token ids equal batch 1's and the minimum per-frame mask IoU.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conformance_harness import fixture_dirs, load_cases  # noqa: E402
from unipixel_cli.engine import Engine, EngineOptions  # noqa: E402
from unipixel_cli.manifest import load_manifest  # noqa: E402
from unipixel_cli.model.loading import load_unipixel  # noqa: E402
from unipixel_cli.output import rle_decode  # noqa: E402
from unipixel_cli.pixelqa import PixelQAEngine  # noqa: E402


def fixture_manifest(fixture: Path, out: Path) -> Path:
    rows = []
    for folder in fixture_dirs(fixture):
        for c in load_cases(folder):
            if "visual_prompts" in c or "user_mask" in c:
                continue
            key = {"video": "video", "image": "image", "frame_folder": "frames", "image_rgba": "image"}[c["media_type"]]
            rows.append({"id": f"{folder.name}-{c['id']}", key: str((folder / c["media"]).resolve()),
                         "prompt": c.get("prompt") or c["question"], "sample_frames": c["sample_frames"],
                         "max_new_tokens": c["max_new_tokens"]})
    out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return out


def run(engine: Engine, rows, batch_size: int) -> dict[str, dict]:
    engine.options.batch_size = batch_size
    return {r["id"]: r for r in engine(rows)}


def compare(base: dict[str, dict], other: dict[str, dict]) -> tuple[float, float]:
    same_tokens, ious = 0, [1.0]
    for rid, a in base.items():
        b = other[rid]
        same_tokens += a["raw_answer"] == b["raw_answer"] and a["status"] == b["status"]
        for oa, ob in zip(a.get("objects") or [], b.get("objects") or []):
            for ma, mb in zip(oa["masks"], ob["masks"]):
                x, y = rle_decode(ma), rle_decode(mb)
                union = (x | y).sum()
                ious.append(1.0 if union == 0 else float((x & y).sum() / union))
    return same_tokens / len(base), min(ious)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", type=Path, default=ROOT.parent / "shared" / "conformance")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    model, proc = load_unipixel(args.model or args.fixture / "tiny-unipixel", device="cpu", dtype=args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        manifests = [("fixture", "segment", fixture_manifest(args.fixture, Path(tmp) / "f.jsonl")),
                     ("examples", "segment", ROOT / "examples" / "videos.jsonl"),
                     ("examples", "pixelqa", ROOT / "examples" / "prompts.jsonl")]
        for name, task, path in manifests:
            rows, errors = load_manifest(path, task)
            engine_cls = PixelQAEngine if task == "pixelqa" else Engine
            engine = engine_cls(model, proc, EngineOptions())
            base = run(engine, rows, 1)
            batched = run(engine, rows, args.batch_size)
            shuffled = list(rows)
            random.Random(0).shuffle(shuffled)
            mixed = run(engine, shuffled, args.batch_size)
            for label, res in ((f"batch {args.batch_size}", batched), (f"batch {args.batch_size} shuffled", mixed)):
                share, min_iou = compare(base, res)
                print(f"{name} {task} ({len(rows)} rows, {args.dtype}) {label}: identical tokens {share:.0%}, "
                      f"min mask IoU {min_iou:.4f}")


if __name__ == "__main__":
    main()
