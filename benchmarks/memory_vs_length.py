"""Peak memory of `propagate all` against video length (SPEC §7: bounded beyond the masks).

    uv run python benchmarks/memory_vs_length.py --model ../shared/conformance/tiny-unipixel \
        --lengths 100,400 --height 480 --width 640

Runs one synthetic video per length through the engine, in this process, and prints the
peak RSS (CPU; Linux VmHWM reset before each run) or CUDA max allocated per length.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from unipixel_cli.bench.speed import peak_memory_mb, reset_peak_memory
from unipixel_cli.engine import Engine, EngineOptions, run_pipeline
from unipixel_cli.manifest import load_manifest
from unipixel_cli.model.loading import load_unipixel
from unipixel_cli.synthetic import iter_moving_shapes, write_video
from unipixel_cli.weights import resolve_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--lengths", default="100,400")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    args = ap.parse_args()
    model, processor = load_unipixel(resolve_model(args.model), device=args.device)
    engine = Engine(model, processor, EngineOptions(propagate="all", batch_size=1, max_new_tokens=24))
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.lengths.split(",")):
            video = write_video(Path(tmp) / f"v{n}.mp4", iter_moving_shapes(n, args.height, args.width, seed=1))
            manifest = Path(tmp) / f"m{n}.jsonl"
            manifest.write_text(json.dumps({"id": f"v{n}", "video": str(video),
                                            "prompt": "Please segment the red ball."}) + "\n")
            rows, _ = load_manifest(manifest, "segment")
            reset_peak_memory(model.device)
            out: list[dict] = []
            t0 = time.perf_counter()
            run_pipeline(engine, rows, out.append)
            objects = len(out[0].get("objects") or [])
            print(f"{n:6d} frames {args.width}x{args.height}: {objects} object(s), "
                  f"peak {peak_memory_mb(model.device):.0f} MB, {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
