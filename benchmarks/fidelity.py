"""How close our outputs are to the authors' on the conformance fixture, per dtype.

    uv run python benchmarks/fidelity.py [--fixture ../shared/conformance] [--dtype bf16]

Prints, for every intermediate kind (seg hidden states, seg tokens, SAM 2 low-res logits,
<|ref|>/<|mem|> embeddings, ...), the max and mean absolute difference to the authors'
values over all cases, next to the authors' own bf16-vs-fp32 difference; then token
equality and the per-frame mask IoU.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conformance_harness import (  # noqa: E402
    compare,
    fixture_dirs,
    golden_dir,
    load_cases,
    load_golden,
    run_case,
)
from unipixel_cli.model.loading import load_unipixel  # noqa: E402


def kind(name: str) -> str:
    """`call0.obj1_seg_token` → `seg_token`."""
    return re.sub(r"^call\d+\.(obj\d+_)?", "", name)


def authors_bf16_vs_fp32(folder: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    bf, fp = golden_dir(folder, "bf16"), golden_dir(folder, "fp32")
    if bf is None or fp is None:
        return out
    for npz in sorted((bf / "intermediates").glob("*.npz")):
        a, b = np.load(npz), np.load(fp / "intermediates" / npz.name)
        for key in a.files:
            if key in b.files and a[key].shape == b[key].shape:
                d = np.abs(a[key].astype(np.float64) - b[key].astype(np.float64))
                out[kind(key.replace("_", ".", 1))] += [float(d.max()), float(d.mean())]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", type=Path, default=ROOT.parent / "shared" / "conformance")
    ap.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--skip", default="", help="comma-separated case ids to leave out")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    diffs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    authors: dict[str, list[float]] = defaultdict(list)
    exact_fail, ious = [], []
    for folder in fixture_dirs(args.fixture):
        gdir = golden_dir(folder, args.dtype)
        if gdir is None:
            continue
        for k, v in authors_bf16_vs_fp32(folder).items():
            authors[k] += v
        model, proc = load_unipixel(folder.parent / "tiny-unipixel" if folder != args.fixture
                                    else folder / "tiny-unipixel", device="cpu", dtype=args.dtype)
        for case in load_cases(folder):
            if case["id"] in skip:
                continue
            golden, inter = load_golden(gdir, case["id"])
            cmp = compare(run_case(model, proc, folder, case, golden), golden, inter)
            exact_fail += [f"{case['id']}:{k}" for k in cmp.failures_exact()]
            for name, d in cmp.diffs.items():
                diffs[kind(name)].append(d)
            ious += [(v, f"{case['id']}:{k}") for k, v in cmp.frame_ious.items()]
    print(f"dtype {args.dtype}: intermediate | ours-vs-authors max | mean | authors bf16-vs-fp32 max | mean")
    for name in sorted(diffs):
        mx = max(d[0] for d in diffs[name])
        mean = float(np.mean([d[1] for d in diffs[name]]))
        a = authors.get(name)
        ref = f"{max(a[0::2]):.3g} | {np.mean(a[1::2]):.3g}" if a else "- | -"
        print(f"{name} | {mx:.3g} | {mean:.3g} | {ref}")
    print("exact fields that differ:", exact_fail or "none")
    worst = sorted(ious)[:5]
    print(f"per-frame mask IoU: min {worst[0][0]:.4f} mean {np.mean([v for v, _ in ious]):.4f}; lowest: {worst}")


if __name__ == "__main__":
    main()
