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
from rich.markup import escape
from rich.table import Table

from . import __version__

app = typer.Typer(help="Batch inference for UniPixel: refer, segment and answer over many videos.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode=None)
weights_app = typer.Typer(help="Known checkpoints: list and download.", no_args_is_help=True,
                          rich_markup_mode=None)
app.add_typer(weights_app, name="weights")
console = Console(stderr=True, soft_wrap=True)  # an error stays one line, however long its path


def stdout_console() -> Console:
    """Tables for people on a terminal; wide, unwrapped lines when piped to logs or files."""
    return Console() if sys.stdout.isatty() else Console(width=240)

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_ROWS_FAILED, EXIT_LOCKED = 0, 1, 2, 3, 4


def env(name: str) -> str:
    return f"UNIPIXEL_{name}"


ModelOpt = Annotated[str, typer.Option("--model", envvar=env("MODEL"),
                                       help="Hub id, known name (unipixel-3b, unipixel-7b) or local dir.")]
RevisionOpt = Annotated[str | None, typer.Option(
    "--revision", envvar=env("REVISION"),
    help="Hub revision (branch, tag or commit) of --model; default: the one pinned in weights/registry.json.")]
DeviceOpt = Annotated[str, typer.Option(envvar=env("DEVICE"), help="auto | cpu | cuda | cuda:N")]
DtypeOpt = Annotated[str, typer.Option(envvar=env("DTYPE"),
                                       help="auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32 (fp16 is not "
                                            "supported)")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, envvar=env("BATCH_SIZE"))]
FramesOpt = Annotated[int, typer.Option("--sample-frames", min=1, envvar=env("SAMPLE_FRAMES"))]
PropOpt = Annotated[str, typer.Option("--propagate", envvar=env("PROPAGATE"), help="sampled | all")]
TokensOpt = Annotated[int, typer.Option("--max-new-tokens", min=1, envvar=env("MAX_NEW_TOKENS"))]
ShardOpt = Annotated[str | None, typer.Option("--shard", envvar=env("SHARD"), help="i/N")]
ResumeOpt = Annotated[bool, typer.Option("--resume/--overwrite", envvar=env("RESUME"),
                                         help="Skip rows already done (default) or delete this shard's "
                                              "results and start over.")]
RetryOpt = Annotated[bool, typer.Option("--retry-errors/--no-retry-errors", envvar=env("RETRY_ERRORS"),
                                        help="Rerun rows whose latest status is error.")]
SupersedeOpt = Annotated[bool, typer.Option("--supersede", envvar=env("SUPERSEDE"),
                                            help="The output holds results of another model or other "
                                                 "output-affecting options: rerun every row with these "
                                                 "(default: refuse, exit 2).")]
InvariantOpt = Annotated[bool, typer.Option("--batch-invariant", envvar=env("BATCH_INVARIANT"),
                                            help="One request per LLM forward and one SAM 2 state per "
                                                 "object, so a row's bf16 output never depends on the "
                                                 "rows batched with it (slower).")]
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
        _error(f"--engine must be local or ray, got {engine!r}", EXIT_USAGE)
        raise typer.Exit(EXIT_USAGE)
    if engine == "local":
        return None
    return {"address": address, "workers": workers, "num_gpus_per_worker": gpus, "cpus_per_worker": cpus}


RenderOpt = Annotated[Path | None, typer.Option("--render", envvar=env("RENDER"),
                                                help="Also render overlays + index.html here as rows finish.")]


_STANDARD_RECORD_KEYS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event, message and the record's structured fields
    (`rows_done`, `rows_failed`, `line`, `id`, `error`, `exit_code`, ... passed as `extra=`)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": self.formatTime(record), "level": record.levelname,
               "event": getattr(record, "event", "log"), "message": record.getMessage()}
        doc |= {k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD_KEYS and k != "event"}
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


_LOG_FORMAT = {"value": "text"}


def _setup_logging(fmt: str, quiet: bool) -> None:
    if fmt not in ("text", "json"):
        _error(f"--log-format must be text or json, got {fmt!r}", EXIT_USAGE)
        raise typer.Exit(EXIT_USAGE)
    _LOG_FORMAT["value"] = fmt
    level = logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # JSON consumers get one `row_done` event per finished row
    logging.getLogger("unipixel.run").setLevel(logging.DEBUG if fmt == "json" and not quiet else logging.NOTSET)
    logging.captureWarnings(True)  # library warnings become log lines (JSON in JSON mode)


def _json_line(event: str, level: str, **fields) -> None:
    doc = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "level": level, "event": event, **fields}
    print(json.dumps(doc, default=str), file=sys.stderr, flush=True)


def _error(message: str, code: int) -> None:
    """The one line a user sees for an error: rich text, or a JSON object in JSON mode."""
    if _LOG_FORMAT["value"] == "json":
        _json_line("error", "ERROR", message=message, error=message, exit_code=code)
    else:
        console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)


class _Progress:
    """Rich progress bar on a TTY, plain periodic log lines otherwise (cron)."""

    def __init__(self, quiet: bool, bar: bool = True) -> None:
        self.total, self.done, self.failed = 0, 0, 0
        self.quiet, self.use_bar = quiet, bar
        self.t0 = self.last = time.monotonic()
        self.bar = None

    def update(self, total: int, ok: bool) -> None:
        if self.done == 0:
            self._start(total)
        self.done += 1
        self.failed += 0 if ok else 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1)
        elif not self.quiet and (time.monotonic() - self.last > 30 or self.done == self.total):
            self.last = time.monotonic()
            rate = self.done / max(1e-9, self.last - self.t0)
            logging.getLogger("unipixel.run").info(
                "progress %d/%d rows (%d failed), %.2f rows/s", self.done, self.total, self.failed, rate,
                extra={"event": "progress", "rows_done": self.done, "rows_failed": self.failed,
                       "rows_total": self.total})

    def _start(self, total: int) -> None:
        self.total = total
        if not self.quiet and self.use_bar and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
            self.bar = Progress("[progress.description]{task.description}", BarColumn(),
                                MofNCompleteColumn(), TimeRemainingColumn(), console=console)
            self.bar.start()
            self.task = self.bar.add_task("unipixel", total=total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _run(task: str, manifest: Path, out: Path, model: str, device: str, dtype: str,
         batch_size: int, sample_frames: int, propagate: str, max_new_tokens: int,
         shard: str | None, resume: bool, limit: int | None, quiet: bool, log_format: str,
         render_dir: Path | None = None, ray: dict | None = None, retry_errors: bool = True,
         supersede: bool = False, batch_invariant: bool = False) -> int:
    """Options → `runner.run` → one line per outcome; returns the exit code."""
    # checked before the heavy imports and before the output folder exists
    if render_dir is not None:
        from .export import is_results_dataset

        if render_dir.resolve() == out.resolve() or is_results_dataset(render_dir):
            _error("--render must be a folder of its own, not a results dataset", EXIT_USAGE)
            return EXIT_USAGE
    from .runner import RayOptions, RunOptions, run

    _setup_logging(log_format, quiet)
    options = RunOptions(model=model, device=device, dtype=dtype, batch_size=batch_size,
                         sample_frames=sample_frames, propagate=propagate, max_new_tokens=max_new_tokens,
                         shard=shard, resume=resume, retry_errors=retry_errors, supersede=supersede, limit=limit,
                         render_dir=render_dir, ray=RayOptions(**ray) if ray else None,
                         batch_invariant=batch_invariant)
    progress = _Progress(quiet, bar=log_format != "json")  # JSON mode: nothing but JSON lines
    try:
        report = run(task, manifest, out, options, progress=progress.update)
    finally:
        progress.close()
    if report.error:
        _error(report.error, report.exit_code)
    if report.signal:
        _exit_after_signal(report.exit_code)
    return report.exit_code


def _exit_after_signal(code: int) -> None:
    """Stopped by a signal: every finished row is on disk and the lock is released, so leave now.
    Interpreter shutdown (torch teardown) takes a while and restores the default handlers: a
    second signal arriving then would kill the process instead of exiting with 128 + signal."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _with_revision(model: str, revision: str | None) -> str:
    from .weights import with_revision  # imports torch: not at module level (fast --help)

    return with_revision(model, revision)


def _engine(task: str, model: str, device: str, dtype: str, options):
    from .model.loading import ModelLoadError
    from .runner import load_engine

    try:
        return load_engine(task, model, device, dtype, options)
    except ModelLoadError as e:
        _error(str(e), EXIT_FATAL)
        raise typer.Exit(EXIT_FATAL) from e


@app.command()
def segment(
    manifest: Annotated[Path, typer.Argument(help="JSONL manifest of videos/images and prompts.")],
    out: OutOpt = Path("unipixel-out"),
    model: ModelOpt = "PolyU-ChenLab/UniPixel-3B",
    revision: RevisionOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: BatchOpt = 8,
    sample_frames: FramesOpt = 16,
    propagate: PropOpt = "sampled",
    max_new_tokens: TokensOpt = 512,
    shard: ShardOpt = None,
    resume: ResumeOpt = True,
    retry_errors: RetryOpt = True,
    supersede: SupersedeOpt = False,
    limit: LimitOpt = None,
    quiet: QuietOpt = False,
    log_format: LogFmtOpt = "text",
    render_dir: RenderOpt = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 1,
    num_gpus_per_worker: GpusOpt = 0.0,
    cpus_per_worker: CpusOpt = 1.0,
    batch_invariant: InvariantOpt = False,
) -> None:
    """Segment what each prompt asks for; answers and masks go to a Parquet dataset."""
    model = _with_revision(model, revision)
    raise typer.Exit(_run("segment", manifest, out, model, device, dtype, batch_size, sample_frames,
                          propagate, max_new_tokens, shard, resume, limit, quiet, log_format, render_dir,
                          _ray_args(engine, ray_address, workers, num_gpus_per_worker, cpus_per_worker),
                          retry_errors, supersede, batch_invariant))


@app.command()
def pixelqa(
    prompts: Annotated[Path, typer.Option("--prompts", help="JSONL manifest of questions with objects.")],
    out: OutOpt = Path("unipixel-pixelqa"),
    model: ModelOpt = "PolyU-ChenLab/UniPixel-3B",
    revision: RevisionOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: BatchOpt = 8,
    sample_frames: FramesOpt = 16,
    max_new_tokens: TokensOpt = 512,
    shard: ShardOpt = None,
    resume: ResumeOpt = True,
    retry_errors: RetryOpt = True,
    supersede: SupersedeOpt = False,
    limit: LimitOpt = None,
    quiet: QuietOpt = False,
    log_format: LogFmtOpt = "text",
    render_dir: RenderOpt = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 1,
    num_gpus_per_worker: GpusOpt = 0.0,
    cpus_per_worker: CpusOpt = 1.0,
    batch_invariant: InvariantOpt = False,
) -> None:
    """Answer questions about objects the user points at (points, boxes or masks)."""
    model = _with_revision(model, revision)
    raise typer.Exit(_run("pixelqa", prompts, out, model, device, dtype, batch_size, sample_frames,
                          "sampled", max_new_tokens, shard, resume, limit, quiet, log_format, render_dir,
                          _ray_args(engine, ray_address, workers, num_gpus_per_worker, cpus_per_worker),
                          retry_errors, supersede, batch_invariant))


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
    task: Annotated[str | None, typer.Option(help="segment | pixelqa (default: detected from the rows)")] = None,
) -> None:
    """Check every row before a long GPU run: schema, ids, media, frame ranges, prompts."""
    from .manifest import ManifestError, detect_task, load_manifest
    from .validation import check_rows

    if task not in (None, "segment", "pixelqa"):
        console.print(f"[red]--task must be segment or pixelqa, got {escape(repr(task))}")
        raise typer.Exit(EXIT_USAGE)
    try:
        task = task or detect_task(manifest)
        rows, bad = load_manifest(manifest, task)
    except ManifestError as e:
        console.print(f"[red]error:[/] {escape(str(e))}")
        raise typer.Exit(EXIT_USAGE) from e
    problems = [(b.line, b.id, b.message) for b in bad] + check_rows(rows)
    problems.sort()
    out = stdout_console()
    if not problems:
        out.print(f"[green]ok[/]: {len(rows)} rows valid ({task})")
        raise typer.Exit(EXIT_OK)
    # ids, paths and decoder messages are the user's and libraries' text: escaped, never markup
    table = Table(title=escape(f"{len(problems)} problem(s) in {manifest} ({task} rows)"))
    for col in ("line", "id", "problem"):
        table.add_column(col)
    for line, row_id, msg in problems:
        table.add_row(str(line), escape(row_id), escape(msg))
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
            table.add_row(mod, f"[red]MISSING[/] ({type(e).__name__}: {escape(str(e))})")
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

    from .weights import cached_path, known_checkpoints
    table.add_row("HF cache", escape(str(constants.HF_HUB_CACHE)))
    table.add_row("HF_HUB_OFFLINE", escape(os.environ.get("HF_HUB_OFFLINE", "0")))
    for c in known_checkpoints().values():
        path = cached_path(c.repo_id, c.revision)
        table.add_row(c.name, f"cached at {escape(str(path))}" if path else
                      f"[yellow]not cached[/] (`unipixel weights pull {c.name}`)")
    out.print(table)
    raise typer.Exit(EXIT_FATAL if missing else EXIT_OK)


bench_app = typer.Typer(help="Benchmarks: engine speed and the authors' benchmark table.", no_args_is_help=True,
                        rich_markup_mode=None)
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
    revision: RevisionOpt = None,
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
    model = _with_revision(model, revision)
    engine = _engine("segment", model, device, dtype, EngineOptions())
    sizes = [int(x) for x in batch_sizes.split(",") if x.strip()]
    results = run_speed(engine.model, engine.processor, manifest, num_requests, sizes, baseline,
                        EngineOptions(sample_frames=sample_frames, propagate=propagate,
                                      max_new_tokens=max_new_tokens), repeats=repeats)
    table = Table(title=f"unipixel bench speed ({escape(model)}, {engine.model.device}, {engine.model.compute_dtype})")
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


def _print_bench(bench, outcome) -> None:
    """The benchmark's table next to the published numbers, and how many items were scored."""
    from rich.markup import escape

    out = stdout_console()
    report = outcome.report
    if report is not None:
        rows = bench.table(report.summary)
        metrics = list(dict.fromkeys(k for _, values in rows for k in values))
        n_failed = len(report.failed)
        n_no_mask = sum(r.no_mask for r in report.results)
        counts = f"{len(report.results) - n_failed} of {len(report.results)} items scored" + (
            f", {n_failed} failed (scored 0)" if n_failed else "") + (
            f", {n_no_mask} answered without a mask (scored as empty masks, as the authors do)" if n_no_mask else "")
        table = Table(title=escape(f"{bench.title} {bench.split}"))
        table.add_column("")
        for m in metrics:
            table.add_column(escape(m), justify="right")
        for label, values in rows:
            table.add_row(escape(str(label)), *(f"{values[m]:.2f}" if m in values else "" for m in metrics))
        for label, values in bench.published.items():
            for i, size in enumerate(("3B", "7B")):
                table.add_row(escape(f"published {size} ({label})"),
                              *(f"{values[m][i]:.1f}" if m in values else "" for m in metrics), style="dim")
        out.print(table)
        out.print(escape(counts), soft_wrap=True)
        for r in report.failed[:5]:
            console.print(f"[yellow]scored 0:[/] {escape(r.item.id)}: {escape(str(r.error))}", soft_wrap=True)
        if n_failed > 5:
            console.print(f"[yellow]… and {n_failed - 5} more in {escape(str(report.summary_path))}[/]")
        out.print(f"wrote {escape(str(report.summary_path))} and {escape(str(report.csv_path))}")
    if outcome.submission is not None:
        out.print(f"{escape(bench.title)} {escape(bench.split)} has no public masks: upload "
                  f"{escape(str(outcome.submission))} to the benchmark's evaluation server")
    if outcome.preds_dir is not None:
        out.print(f"predictions in the authors' layout: {escape(str(outcome.preds_dir))}")
    if outcome.requests_failed:
        console.print(f"[red]{outcome.requests_failed} requests failed[/]; their items count as 0 above "
                      "(see the results dataset's error column)")


def _bench_command(cls):
    """`unipixel bench NAME`: the same options for every benchmark of the registry."""

    def command(data, split=cls.splits[0], out=Path(f"{cls.name}-out"), preds=None, export_png=None, limit=None,
                shard=None, workers=1, model="PolyU-ChenLab/UniPixel-3B", revision=None, device="auto",
                dtype="auto", batch_size=8, max_new_tokens=512, resume=True, quiet=False, log_format="text") -> None:
        from rich.markup import escape

        from .bench.base import BenchDataError, run_benchmark

        model = _with_revision(model, revision)

        def run_requests(manifest: Path, results: Path) -> int:
            # sample_frames / propagate come per request from the benchmark's manifest rows
            return _run(cls.task, manifest, results, model, device, dtype, batch_size, 16, "all",
                        max_new_tokens, shard, resume, None, quiet, log_format)

        try:
            bench = cls(data, split)
            outcome = run_benchmark(bench, out, run_requests, preds=preds, limit=limit, workers=workers,
                                    export_png=export_png, score=shard is None or preds is not None)
        except BenchDataError as e:
            console.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
            raise typer.Exit(EXIT_USAGE) from e
        if outcome.report is None and outcome.submission is None and outcome.exit_code not in (EXIT_OK,
                                                                                                EXIT_ROWS_FAILED):
            raise typer.Exit(outcome.exit_code)
        if shard is not None and preds is None:
            stdout_console().print(f"shard {escape(shard)} done; score every shard together with "
                                   f"--preds {escape(str(Path(out) / 'results'))}")
        _print_bench(bench, outcome)
        raise typer.Exit(outcome.exit_code)

    # real objects, not strings: this module's `from __future__ import annotations` would
    # otherwise make typer evaluate them where `cls` is unknown
    command.__annotations__ = {
        "data": Annotated[Path, typer.Option("--data", help=f"Dataset folder: {cls.layout}")],
        "split": Annotated[str, typer.Option("--split", help=" | ".join(cls.splits))],
        "out": Annotated[Path, typer.Option("-o", "--out", help="Output folder (results/, reports)")],
        "preds": Annotated[Path | None, typer.Option(
            "--preds", help="Score existing predictions, no model: a unipixel results dataset"
            + (" or the authors' PNG folders <pred>/<video>/<exp_id>/<frame>.png" if cls.png_layout else ""))],
        "export_png": Annotated[Path | None, typer.Option(
            "--export-png", help="Where to write our PNGs in the authors' layout (default OUT/preds)",
            hidden=not cls.png_layout)],
        "limit": LimitOpt,
        "shard": Annotated[str | None, typer.Option(
            "--shard", help="i/N: run this shard's requests only; score later with --preds OUT/results")],
        "workers": Annotated[int, typer.Option("--workers", min=1, help="Scoring processes")],
        "model": ModelOpt, "revision": RevisionOpt, "device": DeviceOpt, "dtype": DtypeOpt, "batch_size": BatchOpt,
        "max_new_tokens": TokensOpt, "resume": ResumeOpt, "quiet": QuietOpt, "log_format": LogFmtOpt,
        "return": None,
    }
    command.__doc__ = (f"{cls.title}: run and score like the authors' evaluator "
                       f"({', '.join(cls.metrics) or 'see README'}).")
    return command


def _register_bench_commands() -> None:
    from .bench import REGISTRY

    for name, cls in REGISTRY.items():
        bench_app.command(name)(_bench_command(cls))


_register_bench_commands()


@weights_app.command("list")
def weights_list() -> None:
    """Known checkpoints and whether they are cached."""
    from rich.markup import escape

    from .weights import cached_path, known_checkpoints

    table = Table()
    for col in ("name", "hub id", "revision", "size", "cached", "note"):
        table.add_column(col)
    for c in known_checkpoints().values():
        path = cached_path(c.repo_id, c.revision)
        revision = c.revision if c.revision_pinned else f"{c.revision} (not pinned)"
        table.add_row(*(escape(x) for x in (c.name, c.repo_id, revision, f"~{c.size_gb:.1f} GB",
                                            str(path) if path else "no", c.note)))
    stdout_console().print(table)


@weights_app.command("pull")
def weights_pull(name: Annotated[str, typer.Argument(help="Known name or hub id.")],
                 revision: RevisionOpt = None) -> None:
    """Download a checkpoint into the Hugging Face cache (resumable)."""
    from rich.markup import escape

    from .model.loading import ModelLoadError
    from .weights import hub_target, offline, pull

    repo, rev = hub_target(name, revision)
    if offline():
        console.print("[red]error:[/] HF_HUB_OFFLINE is set; cannot download", soft_wrap=True)
        raise typer.Exit(EXIT_FATAL)
    try:
        stdout_console().print(f"downloaded to {escape(str(pull(repo, rev)))}", soft_wrap=True)
    except ModelLoadError as e:
        console.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(EXIT_FATAL) from e


@app.command()
def compact(
    results: Annotated[Path, typer.Argument(help="Results dataset directory.")],
) -> None:
    """Rewrite a results dataset keeping only current rows (one per id), so any Parquet reader
    (pd.read_parquet, polars, duckdb) reads it without duplicates."""
    from .dataset import ForeignFile
    from .output import LockHeld
    from .runner import compact as compact_dataset

    try:
        before, after = compact_dataset(results)
    except LockHeld as e:
        _error(str(e), EXIT_LOCKED)
        raise typer.Exit(EXIT_LOCKED) from e
    except (ForeignFile, FileNotFoundError, NotADirectoryError) as e:
        _error(str(e), EXIT_USAGE)
        raise typer.Exit(EXIT_USAGE) from e
    except OSError as e:
        _error(f"{e.filename or results}: {e.strerror or e}", EXIT_FATAL)
        raise typer.Exit(EXIT_FATAL) from e
    stdout_console().print(f"{escape(str(results))}: {before} rows in the parts, {after} current rows kept")


def _json_requested(argv: list[str]) -> bool:
    if os.environ.get(env("LOG_FORMAT"), "").lower() == "json":
        return True
    return any(a == "--log-format=json" or (a == "--log-format" and argv[i + 1:i + 2] == ["json"])
               for i, a in enumerate(argv))


def main() -> None:
    """Entry point: usage errors and unexpected failures are one line (a JSON object in JSON mode)."""
    if _json_requested(sys.argv[1:]):
        _LOG_FORMAT["value"] = "json"
    try:
        code = app(standalone_mode=False)
    except Exception as e:
        if hasattr(e, "exit_code") and hasattr(e, "format_message"):  # click usage errors
            code = e.exit_code
            if _LOG_FORMAT["value"] == "json":
                _json_line("usage_error", "ERROR", message=e.format_message(), error=e.format_message(),
                           exit_code=code)
            else:
                e.show()
        elif type(e).__name__ == "Abort":
            code = 130
        else:
            if os.environ.get(env("DEBUG")):
                raise
            code = EXIT_FATAL
            _error(f"unexpected {type(e).__name__}: {e} (UNIPIXEL_DEBUG=1 shows the traceback)", code)
    sys.exit(code if isinstance(code, int) else 0)

