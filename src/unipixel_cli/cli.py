"""`unipixel` command line: wires manifests, media, engine and results together."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from . import __version__

app = typer.Typer(help="Batch inference for UniPixel: refer, segment and answer over many videos.",
                  no_args_is_help=True, add_completion=False)
weights_app = typer.Typer(help="Known checkpoints: list and download.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")
console = Console(stderr=True)


def stdout_console() -> Console:
    """Tables for people on a terminal; wide, unwrapped lines when piped to logs or files."""
    return Console() if sys.stdout.isatty() else Console(width=240)

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_ROWS_FAILED, EXIT_LOCKED = 0, 1, 2, 3, 4


def env(name: str) -> str:
    return f"UNIPIXEL_{name}"


ModelOpt = Annotated[str, typer.Option("--model", envvar=env("MODEL"),
                                       help="Hub id, known name (unipixel-3b, unipixel-7b) or local dir.")]
DeviceOpt = Annotated[str, typer.Option(envvar=env("DEVICE"), help="auto | cpu | cuda | cuda:N")]
DtypeOpt = Annotated[str, typer.Option(envvar=env("DTYPE"), help="auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, envvar=env("BATCH_SIZE"))]
FramesOpt = Annotated[int, typer.Option("--sample-frames", min=1, envvar=env("SAMPLE_FRAMES"))]
PropOpt = Annotated[str, typer.Option("--propagate", envvar=env("PROPAGATE"), help="sampled | all")]
TokensOpt = Annotated[int, typer.Option("--max-new-tokens", min=1, envvar=env("MAX_NEW_TOKENS"))]
ShardOpt = Annotated[str | None, typer.Option("--shard", envvar=env("SHARD"), help="i/N")]
ResumeOpt = Annotated[bool, typer.Option("--resume/--overwrite", envvar=env("RESUME"),
                                         help="Skip ids already written (default) or start over.")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, envvar=env("LIMIT"))]
QuietOpt = Annotated[bool, typer.Option("--quiet", envvar=env("QUIET"))]
LogFmtOpt = Annotated[str, typer.Option("--log-format", envvar=env("LOG_FORMAT"), help="text | json")]
OutOpt = Annotated[Path, typer.Option("-o", "--out", envvar=env("OUT"), help="Output dataset directory.")]
EngineOpt = Annotated[str, typer.Option("--engine", envvar=env("ENGINE"), help="local | ray")]
RayAddressOpt = Annotated[str | None, typer.Option("--ray-address", envvar=env("RAY_ADDRESS"),
                                                   help="Ray cluster address (auto, ray://host:10001); default: local")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, envvar=env("WORKERS"), help="Ray actors (models)")]
GpusOpt = Annotated[float, typer.Option("--num-gpus-per-worker", min=0, envvar=env("NUM_GPUS_PER_WORKER"))]
CpusOpt = Annotated[float, typer.Option("--cpus-per-worker", min=0.01, envvar=env("CPUS_PER_WORKER"))]


def _ray_args(engine: str, address: str | None, workers: int, gpus: float, cpus: float) -> dict | None:
    if engine not in ("local", "ray"):
        console.print(f"[red]--engine must be local or ray, got {engine!r}")
        raise typer.Exit(EXIT_USAGE)
    if engine == "local":
        return None
    return {"address": address, "workers": workers, "num_gpus_per_worker": gpus, "cpus_per_worker": cpus}


RenderOpt = Annotated[Path | None, typer.Option("--render", envvar=env("RENDER"),
                                                help="Also render overlays + index.html here as rows finish.")]


def _setup_logging(fmt: str, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        class JsonFormatter(logging.Formatter):
            def format(self, record):
                return json.dumps({"time": self.formatTime(record), "level": record.levelname,
                                   "message": record.getMessage()})
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class _Progress:
    """Rich progress bar on a TTY, plain periodic log lines otherwise (cron)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.quiet = quiet
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
            self.bar = Progress("[progress.description]{task.description}", BarColumn(),
                                MofNCompleteColumn(), TimeRemainingColumn(), console=console)
            self.bar.start()
            self.task = self.bar.add_task("unipixel", total=total)

    def update(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1)
        elif not self.quiet and (time.monotonic() - self.last > 30 or self.done == self.total):
            self.last = time.monotonic()
            rate = self.done / max(1e-9, self.last - self.t0)
            logging.info("progress %d/%d rows (%d failed), %.2f rows/s", self.done, self.total, self.failed, rate)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _run(task: str, manifest: Path, out: Path, model: str, device: str, dtype: str,
         batch_size: int, sample_frames: int, propagate: str, max_new_tokens: int,
         shard: str | None, resume: bool, limit: int | None, quiet: bool, log_format: str,
         render_dir: Path | None = None, ray: dict | None = None) -> int:
    # checked before the heavy imports and before the output folder exists
    if render_dir is not None:
        from .export import is_results_dataset

        if render_dir.resolve() == out.resolve() or is_results_dataset(render_dir):
            console.print("[red]error:[/] --render must be a folder of its own, not a results dataset",
                          soft_wrap=True)
            return EXIT_USAGE
    from .engine import EngineOptions, error_row, run_pipeline
    from .manifest import ManifestError, load_manifest
    from .output import LockHeld, OutputLock, ResultsWriter, Shard, part_files, written_ids

    _setup_logging(log_format, quiet)
    if propagate not in ("sampled", "all"):
        console.print(f"[red]--propagate must be 'sampled' or 'all', got {propagate!r}")
        return EXIT_USAGE
    try:
        shard_ = Shard.parse(shard)
        rows, bad = load_manifest(manifest, task)
    except (ManifestError, ValueError) as e:
        console.print(f"[red]error:[/] {e}")
        return EXIT_USAGE
    try:
        with OutputLock(out, shard_):
            if not resume:
                for p in part_files(out):
                    if shard_.tag in p.name:
                        p.unlink()
            done = written_ids(out)
            rows = [r for r in rows if shard_.owns(r.id) and r.id not in done]
            bad = [b for b in bad if shard_.owns(b.id) and b.id not in done]
            if limit is not None:
                rows = rows[:limit]
            total = len(rows) + len(bad)
            logging.info("%d rows to run (%d already done, %d invalid)", total, len(done), len(bad))
            if total == 0:
                return EXIT_OK
            options = EngineOptions(sample_frames=sample_frames, propagate=propagate,
                                    max_new_tokens=max_new_tokens, batch_size=batch_size)
            engine = None if ray else _engine(task, model, device, dtype, options)
            meta = {"tool_version": __version__, "model": model,
                    "model_path": str(engine.model_path) if engine else model,
                    "engine": "ray" if ray else "local", "task": task, "manifest": str(manifest),
                    "options": {"device": device, "dtype": dtype, "batch_size": batch_size,
                                "sample_frames": sample_frames, "propagate": propagate,
                                "max_new_tokens": max_new_tokens, "shard": shard or "0/1"}}
            writer = ResultsWriter(out, shard=shard_, metadata=meta, flush_rows=max(8, batch_size))
            progress = _Progress(total, quiet)
            renderer = None
            if render_dir is not None:
                from .render import Renderer
                renderer = Renderer(render_dir, manifest=manifest)

            def sink(row: dict) -> None:
                writer.write(row)
                if renderer is not None:
                    renderer.render_row(row)
                progress.update(row["status"] == "ok")

            try:
                for b in bad:
                    sink(error_row(task, err=b))
                if ray:
                    from .distributed import run_ray
                    try:
                        run_ray(task, rows, sink, model, device, dtype, options, **ray)
                    except RuntimeError as e:
                        console.print(f"[red]error:[/] {e}")
                        return EXIT_FATAL
                else:
                    run_pipeline(engine, rows, sink)
            finally:
                writer.close()
                progress.close()
                if renderer is not None:
                    renderer.write_index()
            logging.info("finished: %d rows, %d failed, results in %s", progress.done, progress.failed, out)
            return EXIT_ROWS_FAILED if progress.failed else EXIT_OK
    except LockHeld as e:
        console.print(f"[red]error:[/] {e}")
        return EXIT_LOCKED


def _engine(task: str, model: str, device: str, dtype: str, options):
    from .engine import Engine
    from .model.loading import ModelLoadError, load_unipixel
    from .weights import resolve_model

    try:
        path = resolve_model(model)
        unipixel, processor = load_unipixel(path, device=device, dtype=dtype)
    except ModelLoadError as e:
        from rich.markup import escape

        console.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)  # one line: no wrap at 80 columns
        raise typer.Exit(EXIT_FATAL) from e
    if task == "pixelqa":
        from .pixelqa import PixelQAEngine
        engine = PixelQAEngine(unipixel, processor, options)
    else:
        engine = Engine(unipixel, processor, options)
    engine.model_path = path  # a hub snapshot path names the revision (commit hash)
    return engine


@app.command()
def segment(
    manifest: Annotated[Path, typer.Argument(help="JSONL manifest of videos/images and prompts.")],
    out: OutOpt = Path("unipixel-out"),
    model: ModelOpt = "PolyU-ChenLab/UniPixel-3B",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: BatchOpt = 8,
    sample_frames: FramesOpt = 16,
    propagate: PropOpt = "sampled",
    max_new_tokens: TokensOpt = 512,
    shard: ShardOpt = None,
    resume: ResumeOpt = True,
    limit: LimitOpt = None,
    quiet: QuietOpt = False,
    log_format: LogFmtOpt = "text",
    render_dir: RenderOpt = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 1,
    num_gpus_per_worker: GpusOpt = 0.0,
    cpus_per_worker: CpusOpt = 1.0,
) -> None:
    """Segment what each prompt asks for; answers and masks go to a Parquet dataset."""
    raise typer.Exit(_run("segment", manifest, out, model, device, dtype, batch_size, sample_frames,
                          propagate, max_new_tokens, shard, resume, limit, quiet, log_format, render_dir,
                          _ray_args(engine, ray_address, workers, num_gpus_per_worker, cpus_per_worker)))


@app.command()
def pixelqa(
    prompts: Annotated[Path, typer.Option("--prompts", help="JSONL manifest of questions with objects.")],
    out: OutOpt = Path("unipixel-pixelqa"),
    model: ModelOpt = "PolyU-ChenLab/UniPixel-3B",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: BatchOpt = 8,
    sample_frames: FramesOpt = 16,
    max_new_tokens: TokensOpt = 512,
    shard: ShardOpt = None,
    resume: ResumeOpt = True,
    limit: LimitOpt = None,
    quiet: QuietOpt = False,
    log_format: LogFmtOpt = "text",
    render_dir: RenderOpt = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 1,
    num_gpus_per_worker: GpusOpt = 0.0,
    cpus_per_worker: CpusOpt = 1.0,
) -> None:
    """Answer questions about objects the user points at (points, boxes or masks)."""
    raise typer.Exit(_run("pixelqa", prompts, out, model, device, dtype, batch_size, sample_frames,
                          "sampled", max_new_tokens, shard, resume, limit, quiet, log_format, render_dir,
                          _ray_args(engine, ray_address, workers, num_gpus_per_worker, cpus_per_worker)))


RenderOutOpt = Annotated[Path, typer.Option(
    "-o", "--out", envvar=env("RENDER_OUT"),
    help="Folder for the report: index.html and media/ (not a results dataset).")]


@app.command()
def render(
    results: Annotated[Path, typer.Argument(help="Results dataset directory.")],
    out: RenderOutOpt = Path("unipixel-render"),
    ids: Annotated[str | None, typer.Option("--ids", help="Comma-separated ids to render")] = None,
    fmt: Annotated[str, typer.Option("--format", help="mp4 | gif | png")] = "mp4",
    limit: LimitOpt = None,
) -> None:
    """Mask overlays (mp4/gif/png), contact sheets and a browsable index.html."""
    from rich.markup import escape

    from .export import ExportError
    from .render import render_results

    if fmt not in ("mp4", "gif", "png"):
        console.print(f"[red]--format must be mp4, gif or png, got {escape(repr(fmt))}")
        raise typer.Exit(EXIT_USAGE)
    try:
        index = render_results(results, out, [i for i in ids.split(",") if i] if ids else None, fmt, limit)
    except ExportError as e:
        console.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from e
    stdout_console().print(f"wrote {escape(str(index))}", soft_wrap=True)


@app.command()
def export(
    results: Annotated[Path, typer.Argument(help="Results dataset directory.")],
    fmt: Annotated[str, typer.Option("--format", help="coco | png | fiftyone")],
    out: Annotated[Path, typer.Option("-o", "--out", envvar=env("EXPORT_OUT"),
                                      help="Folder to write the export into (not a results dataset).")],
    png_style: Annotated[str, typer.Option("--png-style", help="objects: <id>/<object>/<frame>.png (0/255); "
                                           "palette: <id>/<frame>.png, pixel = object id + 1")] = "objects",
) -> None:
    """Masks into the tools people already use: COCO JSON, per-frame PNGs or a FiftyOne dataset."""
    from rich.markup import escape

    from .export import ExportError, export_results

    try:
        summary = export_results(results, out, fmt, png_style)
    except ExportError as e:
        console.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from e
    stdout_console().print(f"wrote {escape(str(summary.path))}: {summary.requests} requests"
                           + (f" ({summary.skipped} error rows have no masks)" if summary.skipped else ""),
                           soft_wrap=True)


@app.command()
def validate(
    manifest: Annotated[Path, typer.Argument(help="JSONL manifest to check.")],
    task: Annotated[str, typer.Option(help="segment | pixelqa")] = "segment",
) -> None:
    """Check every row before a long GPU run: schema, ids, media, frame ranges, prompts."""
    from .manifest import ManifestError, load_manifest
    from .validation import check_rows

    if task not in ("segment", "pixelqa"):
        console.print(f"[red]--task must be segment or pixelqa, got {task!r}")
        raise typer.Exit(EXIT_USAGE)
    try:
        rows, bad = load_manifest(manifest, task)
    except ManifestError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(EXIT_USAGE) from e
    problems = [(b.line, b.id, b.message) for b in bad] + check_rows(rows)
    problems.sort()
    out = stdout_console()
    if not problems:
        out.print(f"[green]ok[/]: {len(rows)} rows valid")
        raise typer.Exit(EXIT_OK)
    table = Table(title=f"{len(problems)} problem(s) in {manifest}")
    for col in ("line", "id", "problem"):
        table.add_column(col)
    for line, row_id, msg in problems:
        table.add_row(str(line), row_id, msg)
    out.print(table)
    raise typer.Exit(EXIT_USAGE)


@app.command()
def doctor() -> None:
    """Versions, device, model cache and anything missing."""
    import importlib

    out = stdout_console()
    table = Table(title="unipixel doctor")
    table.add_column("item")
    table.add_column("status")
    table.add_row("unipixel", __version__)
    table.add_row("python", platform.python_version())
    missing = 0
    for mod in ("torch", "torchvision", "transformers", "sam2", "decord", "av", "pycocotools", "pyarrow"):
        try:
            m = importlib.import_module(mod)
            table.add_row(mod, getattr(m, "__version__", "installed"))
        except Exception as e:
            missing += 1
            table.add_row(mod, f"[red]MISSING[/] ({type(e).__name__}: {e})")
    try:
        import torch
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                table.add_row(f"cuda:{i}", f"{p.name}, {p.total_memory / 2**30:.1f} GiB")
        else:
            table.add_row("cuda", "[yellow]not available[/] (runs on CPU: slow, fine for tests)")
    except Exception:
        pass
    from huggingface_hub import constants

    from .weights import REGISTRY, cached_path
    table.add_row("HF cache", str(constants.HF_HUB_CACHE))
    table.add_row("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "0"))
    for c in REGISTRY.values():
        path = cached_path(c.repo_id, c.revision)
        table.add_row(c.name, f"cached at {path}" if path else
                      f"[yellow]not cached[/] (`unipixel weights pull {c.name}`)")
    out.print(table)
    raise typer.Exit(EXIT_FATAL if missing else EXIT_OK)


bench_app = typer.Typer(help="Benchmarks: engine speed and ReVOS.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("speed")
def bench_speed(
    manifest: Annotated[Path | None, typer.Option("--manifest", help="Segment manifest (default: synthetic)")] = None,
    num_requests: Annotated[int, typer.Option("--num-requests", min=1)] = 16,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated, e.g. 1,4,8")] = "1,8",
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline",
                                           help="Also run per-sample like the authors' scripts")] = True,
    repeats: Annotated[int, typer.Option(min=1, help="Runs per setting; the fastest is reported")] = 1,
    model: ModelOpt = "PolyU-ChenLab/UniPixel-3B",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    sample_frames: FramesOpt = 16,
    propagate: PropOpt = "sampled",
    max_new_tokens: TokensOpt = 512,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON")] = None,
) -> None:
    """Throughput, per-stage time, forward-pass share and peak memory at several batch sizes."""
    from dataclasses import asdict

    from .bench.speed import run_speed
    from .engine import EngineOptions

    _setup_logging("text", quiet=True)
    engine = _engine("segment", model, device, dtype, EngineOptions())
    sizes = [int(x) for x in batch_sizes.split(",") if x.strip()]
    results = run_speed(engine.model, engine.processor, manifest, num_requests, sizes, baseline,
                        EngineOptions(sample_frames=sample_frames, propagate=propagate,
                                      max_new_tokens=max_new_tokens), repeats=repeats)
    table = Table(title=f"unipixel bench speed ({model}, {engine.model.device}, {engine.model.compute_dtype})")
    for col in ("mode", "batch", "req", "wall s", "req/s", "frames/s", "decode s", "llm s", "sam2 s",
                "encode s", "in forward", "peak MB", "same output"):
        table.add_column(col, justify="right")
    base = next((r.requests_per_s for r in results if r.mode == "per-sample"), None)
    for r in results:
        speedup = f" ({r.requests_per_s / base:.1f}x)" if base and r.mode != "per-sample" else ""
        table.add_row(r.mode, str(r.batch_size), str(r.requests), f"{r.wall_s:.2f}",
                      f"{r.requests_per_s:.2f}{speedup}", f"{r.frames_per_s:.1f}", f"{r.decode_s:.2f}",
                      f"{r.llm_s:.2f}", f"{r.sam2_s:.2f}", f"{r.encode_s:.2f}", f"{100 * r.forward_share:.0f}%",
                      f"{r.peak_memory_mb:.0f}", f"{100 * r.same_output:.0f}%")
    stdout_console().print(table)
    if json_out:
        json_out.write_text(json.dumps([asdict(r) for r in results], indent=2))


@bench_app.command("revos")
def bench_revos(
    data: Annotated[Path, typer.Option("--data", help="ReVOS release folder (JPEGImages/, meta, mask dicts)")],
    split: Annotated[str, typer.Option("--split")] = "valid",
    out: OutOpt = Path("revos-out"),
    preds: Annotated[Path | None, typer.Option("--preds", help="Score PNGs in the authors' layout; no model")] = None,
    export_png: Annotated[Path | None, typer.Option("--export-png", help="Our PNGs (default OUT/preds)")] = None,
    limit: LimitOpt = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Evaluation processes")] = 4,
    model: ModelOpt = "PolyU-ChenLab/UniPixel-3B",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: BatchOpt = 8,
    max_new_tokens: TokensOpt = 512,
    resume: ResumeOpt = True,
    quiet: QuietOpt = False,
    log_format: LogFmtOpt = "text",
) -> None:
    """Segment every ReVOS expression (propagate all, 16 LLM frames) and score J, F, J&F, A, R."""
    import resource

    from .bench.revos import (
        RevosDataError,
        evaluate,
        export_pngs,
        load_expressions,
        summarize,
        write_manifest,
        write_reports,
    )
    from .output import read_results

    try:
        expressions = load_expressions(data, split)
    except RevosDataError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(EXIT_USAGE) from e
    if limit is not None:
        expressions = expressions[:limit]
    run_info = ""
    if preds is None:
        try:
            manifest = write_manifest(data, expressions, out / f"revos_{split}_manifest.jsonl")
        except RevosDataError as e:
            console.print(f"[red]error:[/] {e}")
            raise typer.Exit(EXIT_USAGE) from e
        code = _run("segment", manifest, out / "results", model, device, dtype, batch_size, 16, "all",
                    max_new_tokens, None, resume, None, quiet, log_format)
        if code not in (EXIT_OK, EXIT_ROWS_FAILED):
            raise typer.Exit(code)
        results = read_results(out / "results").to_dict("records")
        preds = export_png or out / "preds"
        export_pngs(results, expressions, data, preds)
        ok = [r for r in results if r["status"] == "ok"]
        busy = sum(sum(r["timings"].values()) for r in ok)
        frames = sum(len(r["frame_indices"]) for r in ok)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        run_info = (f"{len(results)} expressions, {len(results) - len(ok)} failed; {frames} frames; "
                    f"{frames / max(busy, 1e-9):.1f} frames/s of stage time; peak RSS {peak:.0f} MB")
    rows = evaluate(data, preds, expressions, workers=workers)
    summary = summarize(rows)
    json_path, csv_path = write_reports(rows, summary, out, split)
    table = Table(title=f"ReVOS {split} ({len(rows)} expressions)")
    for col in ("split", "J", "F", "J&F", "A", "R"):
        table.add_column(col, justify="right")
    for name, v in summary.items():
        table.add_row(name, *(f"{v[k]:.2f}" for k in ("J", "F", "JF", "A", "R")))
    stdout_console().print(table)
    if run_info:
        stdout_console().print(run_info)
    stdout_console().print(f"wrote {json_path} and {csv_path}")


@weights_app.command("list")
def weights_list() -> None:
    """Known checkpoints and whether they are cached."""
    from .weights import REGISTRY, cached_path

    table = Table()
    for col in ("name", "hub id", "size", "cached", "note"):
        table.add_column(col)
    for c in REGISTRY.values():
        path = cached_path(c.repo_id, c.revision)
        table.add_row(c.name, c.repo_id, f"{c.size_gb:.1f} GB", str(path) if path else "no", c.note)
    stdout_console().print(table)


@weights_app.command("pull")
def weights_pull(name: Annotated[str, typer.Argument(help="Known name or hub id.")]) -> None:
    """Download a checkpoint into the Hugging Face cache (resumable)."""
    from rich.markup import escape

    from .model.loading import ModelLoadError
    from .weights import lookup, offline, pull

    known = lookup(name)
    repo, rev = (known.repo_id, known.revision) if known else (name, "main")
    if offline():
        console.print("[red]error:[/] HF_HUB_OFFLINE is set; cannot download", soft_wrap=True)
        raise typer.Exit(EXIT_FATAL)
    try:
        stdout_console().print(f"downloaded to {escape(str(pull(repo, rev)))}", soft_wrap=True)
    except ModelLoadError as e:
        console.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(EXIT_FATAL) from e


def main() -> None:
    app()
