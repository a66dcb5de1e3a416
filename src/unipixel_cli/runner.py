"""Run orchestration: plan the rows to run from a manifest and the results dataset, hold the
output lock, drive the engine (local or Ray), write the results and handle signals.

Every command that runs the model over rows calls `run` (`segment`, `pixelqa`, `bench revos`,
the Ray path); the CLI only parses options and prints. `run` never prints: it logs events
(logger `unipixel.run`, with structured fields in `record.__dict__`) and returns a `RunReport`
whose `exit_code` follows the CLI's contract.

    from unipixel_cli.runner import RunOptions, run
    report = run("segment", Path("m.jsonl"), Path("out"), RunOptions(model="tiny-random"))
    report.exit_code, report.rows_ok, report.rows_failed
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from . import __version__
from .manifest import ManifestRow, RowError

log = logging.getLogger("unipixel.run")

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_ROWS_FAILED, EXIT_LOCKED = 0, 1, 2, 3, 4


@dataclass
class RayOptions:
    """Where and how wide to run with `--engine ray`."""

    address: str | None = None
    workers: int = 1
    num_gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0


@dataclass
class RunOptions:
    """Everything a run needs besides its rows and output folder (CLI defaults)."""

    model: str = "PolyU-ChenLab/UniPixel-3B"
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8
    sample_frames: int = 16
    propagate: str = "sampled"
    max_new_tokens: int = 512
    shard: str | None = None
    resume: bool = True
    retry_errors: bool = True  # rerun rows whose latest status is error
    supersede: bool = False  # accept another model/settings than the dataset's: every row reruns
    limit: int | None = None
    render_dir: Path | None = None
    ray: RayOptions | None = None
    batch_invariant: bool = False  # bf16: a row's output never depends on its batch (slower)


@dataclass
class RunReport:
    """What a run did; `exit_code` is the CLI's (0 ok, 3 rows failed, 2 usage, 4 locked, 1 fatal,
    143/130 stopped by SIGTERM/SIGINT)."""

    exit_code: int = EXIT_OK
    error: str | None = None  # one line for the user when the run could not start or died
    rows_total: int = 0  # rows this run set out to run
    rows_ok: int = 0  # rows written by this run, by status
    rows_failed: int = 0
    plan: Plan | None = None
    signal: str | None = None  # "SIGTERM" / "SIGINT" when a signal stopped the run
    out: Path | None = None

    @property
    def rows_done(self) -> int:
        return self.rows_ok + self.rows_failed


@dataclass
class Plan:
    """Manifest rows against the dataset's current rows (of this shard)."""

    rows: list[ManifestRow] = field(default_factory=list)  # to run
    bad: list[RowError] = field(default_factory=list)  # invalid lines to (re)write as error rows
    new: int = 0
    retry: int = 0  # latest status is error
    changed: int = 0  # inputs, model or output-affecting options differ from the stored row
    done: int = 0  # current, ok, unchanged: skipped
    failed_kept: int = 0  # latest status error, kept because of --no-retry-errors
    stale: int = 0  # current rows whose id is not in the manifest any more (kept)
    limited: int = 0  # left for a later run by --limit

    @property
    def total(self) -> int:
        return len(self.rows) + len(self.bad)


ProgressFn = Callable[[int, bool], None]  # (rows_total, row_ok) per finished row


class RunFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def load_engine(task: str, model: str, device: str, dtype: str, options):
    """The model on its device wrapped in the task's engine; raises `ModelLoadError`."""
    from .engine import Engine
    from .model.loading import load_unipixel
    from .weights import resolve_model

    path = resolve_model(model)
    unipixel, processor = load_unipixel(path, device=device, dtype=dtype)
    if task == "pixelqa":
        from .pixelqa import PixelQAEngine
        engine = PixelQAEngine(unipixel, processor, options)
    else:
        engine = Engine(unipixel, processor, options)
    engine.model_path = path  # a hub snapshot path names the revision (commit hash)
    return engine


# -- options ------------------------------------------------------------------------------
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DTYPES = ("auto", "bf16", "fp32")


def check_options(task: str, opts: RunOptions) -> None:
    """Usage errors (exit 2) found before anything is read or created."""
    if opts.propagate not in ("sampled", "all"):
        raise RunFailed(EXIT_USAGE, f"--propagate must be 'sampled' or 'all', got {opts.propagate!r}")
    if opts.dtype == "fp16":
        # the checkpoints are bf16 and the authors' precision policy (conformance bf16/) has no
        # fp16 variant: fp16 overflows where bf16 does not, and nothing here checks its outputs
        raise RunFailed(EXIT_USAGE, "--dtype fp16 is not supported (no reference outputs; the checkpoints are "
                                    "bf16): use bf16 on GPU or fp32")
    if opts.dtype not in DTYPES:
        raise RunFailed(EXIT_USAGE, f"--dtype must be one of {', '.join(DTYPES)}, got {opts.dtype!r}")
    if not DEVICE_RE.match(opts.device):
        raise RunFailed(EXIT_USAGE, f"--device must be auto, cpu, cuda or cuda:N, got {opts.device!r}")
    for name in ("batch_size", "sample_frames", "max_new_tokens"):
        if getattr(opts, name) < 1:
            raise RunFailed(EXIT_USAGE, f"--{name.replace('_', '-')} must be at least 1")
    if opts.limit is not None and opts.limit < 1:
        raise RunFailed(EXIT_USAGE, "--limit must be at least 1")
    if opts.device.startswith("cuda") and opts.ray is None:  # Ray workers may have GPUs the driver lacks
        import torch

        if not torch.cuda.is_available():
            raise RunFailed(EXIT_USAGE, f"--device {opts.device}: CUDA is not available on this machine "
                                        "(use --device cpu or auto)")
        index = int(opts.device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise RunFailed(EXIT_USAGE, f"--device {opts.device}: this machine has {torch.cuda.device_count()} "
                                        "CUDA device(s)")


def resolved_dtype(opts: RunOptions) -> str:
    """The dtype outputs are computed in (`auto` decided as the model loader does)."""
    if opts.dtype != "auto" or opts.ray is not None:
        return opts.dtype
    if opts.device.startswith("cuda"):
        return "bf16"
    if opts.device == "cpu":
        return "fp32"
    import torch

    return "bf16" if torch.cuda.is_available() else "fp32"


# -- model identity, settings, fingerprints ----------------------------------------------
def model_digest(path: Path) -> str:
    """A cheap content digest of a checkpoint folder: config, file names and sizes, and the
    first and last 64 KiB of every file (tensor headers and values), so another checkpoint,
    seed or revision differs without reading gigabytes."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(65536))
            if size > 65536:
                fh.seek(max(65536, size - 65536))
                h.update(fh.read())
    return h.hexdigest()[:16]


def model_identity(model: str, ray: bool) -> dict:
    """`model` as given, its local path and digest; raises `ModelLoadError` (not found)."""
    from .weights import resolve_model

    if ray and not Path(model).expanduser().is_dir():
        return {"model": model}  # resolved by the workers; the name is the identity
    path = resolve_model(model)
    return {"model": model, "model_path": str(path), "model_digest": model_digest(Path(path))}


def run_settings(task: str, opts: RunOptions, identity: dict) -> dict:
    """What makes two rows comparable: task, model, dtype and output-affecting options
    (batch size, device and shards change nothing but float noise)."""
    return {"task": task, **identity, "dtype": resolved_dtype(opts), "sample_frames": opts.sample_frames,
            "propagate": opts.propagate, "max_new_tokens": opts.max_new_tokens}


def fingerprint(mrow: ManifestRow, settings: dict) -> str:
    """Hash of a row's inputs as given, its effective options and the run's model and dtype."""
    row = mrow.row
    given = row.model_dump(mode="json", exclude={"id"}, exclude_none=True)
    effective = {"sample_frames": getattr(row, "sample_frames", None) or settings["sample_frames"],
                 "propagate": getattr(row, "propagate", None) or settings["propagate"],
                 "max_new_tokens": getattr(row, "max_new_tokens", None) or settings["max_new_tokens"]}
    model = settings.get("model_digest") or settings["model"]
    doc = {"task": settings["task"], "row": given, "effective": effective, "model": model, "dtype": settings["dtype"]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]


def bad_fingerprint(err: RowError) -> str:
    """An invalid line's fingerprint: its problem, so a fixed line counts as changed."""
    return hashlib.sha256(f"invalid\0{err.message}".encode()).hexdigest()[:32]


def _legacy_settings(meta: dict) -> dict:
    options = meta.get("options") or {}
    return {"task": meta.get("task"), "model": meta.get("model"),
            **{k: options[k] for k in ("sample_frames", "propagate", "max_new_tokens") if k in options}}


def settings_differences(stored: dict, wanted: dict) -> list[str]:
    """Human-readable differences between a dataset's settings and a run's."""
    diffs = []
    if stored.get("model_digest") and wanted.get("model_digest"):
        if stored["model_digest"] != wanted["model_digest"]:
            diffs.append(f"model {stored.get('model_path') or stored.get('model')} → "
                         f"{wanted.get('model_path') or wanted.get('model')}")
    elif stored.get("model") is not None and stored.get("model") != wanted.get("model"):
        diffs.append(f"model {stored.get('model')} → {wanted.get('model')}")
    for key in ("task", "dtype", "sample_frames", "propagate", "max_new_tokens"):
        if key in stored and stored[key] != wanted.get(key):
            diffs.append(f"{key.replace('_', '-')} {stored[key]} → {wanted.get(key)}")
    return diffs


# -- the dataset's state and the plan -------------------------------------------------------
@dataclass
class _Stored:
    status: str | None
    fingerprint: str | None
    settings: dict


def stored_rows(parts: list) -> dict[str, _Stored]:
    """Current row per id (newest part wins) with the settings of the part it came from."""
    from .dataset import current, read_parts
    from .output import SCHEMA

    table = current(read_parts(parts, SCHEMA, ["id", "status", "fingerprint"]), keep_order=True)
    settings = [p.settings or _legacy_settings(p.metadata) for p in parts]
    cols = (table.column(c).to_pylist() for c in ("id", "status", "fingerprint", "_order"))
    return {i: _Stored(s, f, settings[k]) for i, s, f, k in zip(*cols)}


def make_plan(rows: list[ManifestRow], bad: list[RowError], stored: dict[str, _Stored], settings: dict,
              retry_errors: bool, limit: int | None) -> Plan:
    """Which rows run: new ids, changed rows, and (by default) rows whose latest status is error."""
    plan = Plan()
    for r in rows:
        old = stored.get(r.id)
        if old is None:
            plan.new += 1
        elif old.fingerprint is not None and old.fingerprint != fingerprint(r, settings):
            plan.changed += 1  # rows of versions without fingerprints count as unchanged
        elif old.status != "ok":
            if not retry_errors:
                plan.failed_kept += 1
                continue
            plan.retry += 1
        else:
            plan.done += 1
            continue
        plan.rows.append(r)
    for b in bad:
        old = stored.get(b.id)
        if old is not None and old.fingerprint == bad_fingerprint(b) and not retry_errors:
            plan.failed_kept += 1
            continue
        if old is None:
            plan.new += 1
        elif old.status == "ok" or old.fingerprint != bad_fingerprint(b):
            plan.changed += 1  # the line is invalid now (or differently): its error row supersedes the old one
        else:
            plan.retry += 1
        plan.bad.append(b)
    wanted = {r.id for r in rows} | {b.id for b in bad}
    plan.stale = sum(1 for i in stored if i not in wanted)
    if limit is not None and len(plan.rows) > limit:
        plan.limited = len(plan.rows) - limit
        plan.rows = plan.rows[:limit]
    return plan


# -- signals -----------------------------------------------------------------------------
class StopRequest:
    """SIGTERM/SIGINT: the first asks the run to stop after the batch in flight (finished rows
    are written at once), a second one exits at once. Only the main thread can install it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.event = threading.Event()
        self._saved: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._saved[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            # once stopping, the process is on its way out: a second signal during cleanup still
            # exits at once with 128 + signal, never as an uncaught KeyboardInterrupt
            signal.signal(sig, self._exit_now if self.requested else handler)
        self._saved.clear()

    @staticmethod
    def _exit_now(signum: int, frame) -> None:
        os._exit(128 + signum)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            self._exit_now(signum, frame)  # second signal: at once (finished rows are already on disk)
        self.signum = signum
        self.event.set()
        with contextlib.suppress(RuntimeError):  # the handler interrupted a write to stderr
            log.warning("%s: finishing the batch in flight, then stopping (send it again to exit at once)",
                        self.name, extra={"event": "signal", "signal": self.name})


# -- the run -------------------------------------------------------------------------------
def _ensure_folder(out: Path) -> bool:
    """Create `out` if needed; True when this run created it. Raises RunFailed (exit 1)."""
    if out.exists() and not out.is_dir():
        raise RunFailed(EXIT_FATAL, f"{out}: exists and is not a directory")
    try:
        out.mkdir(parents=True)
    except FileExistsError:
        if not out.is_dir():
            raise RunFailed(EXIT_FATAL, f"{out}: exists and is not a directory") from None
        return False  # there already, or another run created it just now
    except OSError as e:
        raise RunFailed(EXIT_FATAL, f"{e.filename or out}: cannot create the output folder ({e.strerror})") from e
    return True


def _remove_untouched(out: Path) -> None:
    """A failed start leaves nothing behind: the folder it created, holding only its locks."""
    from .dataset import LOCK_RE

    try:
        entries = list(out.iterdir())
        if all(LOCK_RE.match(e.name) for e in entries):
            for e in entries:
                e.unlink()
            out.rmdir()
    except OSError:
        pass


def _load_rows(task: str, source: Path | list[ManifestRow]) -> tuple[list[ManifestRow], list[RowError]]:
    from .manifest import ManifestError, load_manifest

    if isinstance(source, list):
        return list(source), []
    try:
        return load_manifest(source, task)
    except ManifestError as e:
        raise RunFailed(EXIT_USAGE, str(e)) from e


def run(task: str, source: Path | list[ManifestRow], out: Path, options: RunOptions | None = None,
        progress: ProgressFn | None = None) -> RunReport:
    """Run `task` ("segment" | "pixelqa") over a manifest (or already loaded rows) into `out`.

    Never raises for user errors: they come back as `RunReport.error` with the exit code.
    """
    opts = options or RunOptions()
    out = Path(out)
    stop = StopRequest()
    stop.install()
    created = False
    report = RunReport(out=out)
    try:
        check_options(task, opts)
        from .output import Shard
        try:
            shard = Shard.parse(opts.shard)
        except ValueError as e:
            raise RunFailed(EXIT_USAGE, str(e)) from e
        rows, bad = _load_rows(task, source)
        _check_foreign(out)  # before anything is created, moved or deleted
        identity = _identity(opts)
        created = _ensure_folder(out)
        _run_locked(task, source, rows, bad, out, shard, opts, identity, stop, progress, report)
    except RunFailed as e:
        report.exit_code, report.error = e.code, str(e)
    except OSError as e:  # the output folder became unwritable or full under the run
        report.exit_code, report.error = EXIT_FATAL, f"{e.filename or out}: {e.strerror or e}"
    finally:
        stop.restore()
        if created and report.exit_code not in (EXIT_OK, EXIT_ROWS_FAILED, EXIT_LOCKED) and not report.rows_done:
            _remove_untouched(out)
    return report


def _check_foreign(out: Path) -> None:
    from .dataset import ForeignFile, scan

    if out.exists() and not out.is_dir():
        raise RunFailed(EXIT_FATAL, f"{out}: exists and is not a directory")
    try:
        scan(out)
    except ForeignFile as e:
        raise RunFailed(EXIT_USAGE, str(e)) from e
    except OSError as e:
        raise RunFailed(EXIT_FATAL, f"{e.filename or out}: cannot read ({e.strerror})") from e


def _identity(opts: RunOptions) -> dict:
    from .model.loading import ModelLoadError

    try:
        return model_identity(opts.model, ray=opts.ray is not None)
    except ModelLoadError as e:
        raise RunFailed(EXIT_FATAL, str(e)) from e


def _run_locked(task: str, source, rows: list[ManifestRow], bad: list[RowError], out: Path, shard,
                opts: RunOptions, identity: dict, stop: StopRequest, progress: ProgressFn | None,
                report: RunReport) -> None:
    from .dataset import ForeignFile, next_seq, quarantine, scan
    from .output import LockHeld, OutputLock

    try:
        lock = OutputLock(out, shard).__enter__()
    except LockHeld as e:
        raise RunFailed(EXIT_LOCKED, str(e)) from e
    except OSError as e:
        raise RunFailed(EXIT_FATAL, f"{e.filename or out}: cannot write the lock ({e.strerror})") from e
    try:
        try:
            found = scan(out)
        except ForeignFile as e:
            raise RunFailed(EXIT_USAGE, str(e)) from e
        if found.corrupt:
            dest = quarantine(found.corrupt, out)
            for p in found.corrupt:
                log.warning("%s is not a readable part (truncated or empty): moved to %s; its rows run again",
                            p, dest, extra={"event": "quarantine", "path": str(p)})
        for legacy in out.glob(".lock-shard*"):  # polars cannot read a folder holding them
            legacy.unlink(missing_ok=True)
        parts = found.parts
        doomed = [] if opts.resume else [p for p in parts if p.shard == shard.tag]  # --overwrite
        parts = [p for p in parts if p not in doomed]
        settings = run_settings(task, opts, identity)
        everything = stored_rows(parts)
        _refuse_mixed_settings(out, everything, settings, opts)  # whole dataset; before anything is deleted
        stored = {i: s for i, s in everything.items() if shard.owns(i)}
        for p in doomed:
            p.path.unlink()
        plan = make_plan([r for r in rows if shard.owns(r.id)], [b for b in bad if shard.owns(b.id)], stored,
                         settings, opts.retry_errors, opts.limit)
        report.plan, report.rows_total = plan, plan.total
        log.info("%d rows to run: %d new, %d to retry, %d changed; %d done, %d failed kept, %d not in the "
                 "manifest any more%s", plan.total, plan.new, plan.retry, plan.changed, plan.done, plan.failed_kept,
                 plan.stale, f", {plan.limited} left by --limit" if plan.limited else "",
                 extra={"event": "plan", "rows_to_run": plan.total, "rows_new": plan.new, "rows_retry": plan.retry,
                        "rows_changed": plan.changed, "rows_done_before": plan.done,
                        "rows_failed_kept": plan.failed_kept, "rows_stale": plan.stale})
        if plan.total and not stop.requested:
            _execute(task, source, plan, out, shard, opts, settings, next_seq(parts), stop, progress, report)
        report.exit_code = (stop.exit_code if stop.requested else
                            EXIT_ROWS_FAILED if report.rows_failed or plan.failed_kept else EXIT_OK)
        fields = {"rows_done": report.rows_done, "rows_failed": report.rows_failed, "exit_code": report.exit_code}
        if stop.requested:
            left = plan.total - report.rows_done
            log.warning("stopped by %s: kept %d finished rows (%d failed) in %s; %d rows left: run the same "
                        "command again to resume", stop.name, report.rows_done, report.rows_failed, out, left,
                        extra={"event": "interrupted", "signal": stop.name, "rows_left": left, **fields})
        else:
            log.info("finished: %d rows, %d failed, results in %s", report.rows_done, report.rows_failed, out,
                     extra={"event": "finished", **fields})
    finally:
        lock.__exit__()


def _refuse_mixed_settings(out: Path, stored: dict[str, _Stored], settings: dict, opts: RunOptions) -> None:
    seen: list[dict] = []
    for s in stored.values():
        if s.settings not in seen:
            seen.append(s.settings)
    diffs = sorted({d for s in seen for d in settings_differences(s, settings)})
    if not diffs:
        return
    if not opts.supersede:
        raise RunFailed(EXIT_USAGE, f"{out} holds results of other settings ({'; '.join(diffs)}); use another "
                                    "-o, or --supersede to rerun every row with these settings")
    log.warning("--supersede: %s; every row of this shard runs again", "; ".join(diffs),
                extra={"event": "supersede"})


def _execute(task: str, source, plan: Plan, out: Path, shard, opts: RunOptions, settings: dict, first_seq: int,
             stop: StopRequest, progress: ProgressFn | None, report: RunReport) -> None:
    from .engine import EngineOptions, error_row, run_pipeline
    from .model.loading import ModelLoadError
    from .output import ResultsWriter

    engine_options = EngineOptions(sample_frames=opts.sample_frames, propagate=opts.propagate,
                                   max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size,
                                   batch_invariant=opts.batch_invariant)
    try:
        engine = None if opts.ray else load_engine(task, opts.model, opts.device, opts.dtype, engine_options)
    except ModelLoadError as e:
        raise RunFailed(EXIT_FATAL, str(e)) from e
    if stop.requested:
        return
    meta = {"format": 2, "tool_version": __version__, "model": opts.model,
            "model_path": settings.get("model_path", opts.model), "engine": "ray" if opts.ray else "local",
            "task": task, "manifest": None if isinstance(source, list) else str(source), "settings": settings,
            "options": {"device": opts.device, "dtype": opts.dtype, "batch_size": opts.batch_size,
                        "sample_frames": opts.sample_frames, "propagate": opts.propagate,
                        "max_new_tokens": opts.max_new_tokens, "shard": opts.shard or "0/1",
                        "batch_invariant": opts.batch_invariant}}
    writer = ResultsWriter(out, shard=shard, metadata=meta, flush_rows=max(8, opts.batch_size),
                           first_seq=first_seq)
    renderer = None
    if opts.render_dir is not None:
        from .render import Renderer
        renderer = Renderer(opts.render_dir, manifest=None if isinstance(source, list) else source)
    fingerprints = {r.id: fingerprint(r, settings) for r in plan.rows} | {b.id: bad_fingerprint(b) for b in plan.bad}
    write_lock = threading.Lock()
    finished = threading.Event()

    def sink(row: dict) -> None:
        with write_lock:
            # "error" too when the writer had to store the row as an error row (it did not fit)
            status = writer.write({**row, "fingerprint": fingerprints.get(row["id"])})
            if stop.requested:
                writer.flush()  # stopping: every finished row goes to disk at once
            if renderer is not None:
                renderer.render_row(row)
            ok = status == "ok"
            report.rows_ok += ok
            report.rows_failed += not ok
        where = {"line": row.get("line"), "id": row["id"]}
        if ok:  # DEBUG: shown in JSON mode (one event per row), not in text logs
            log.debug("line %s (id %s): ok", row.get("line"), row["id"], extra={"event": "row_done", **where})
        else:
            log.warning("id %s: %s", row["id"], row.get("error"),
                        extra={"event": "row_failed", **where, "error": row.get("error")})
        if progress is not None:
            progress(plan.total, ok)

    def flush_on_signal() -> None:
        # rows finished before the signal may sit in the buffer while the batch in flight runs
        stop.event.wait()
        if not finished.is_set():
            with write_lock:
                writer.flush()

    threading.Thread(target=flush_on_signal, name="flush-on-signal", daemon=True).start()
    try:
        for b in plan.bad:
            sink(error_row(task, err=b))
        if opts.ray:
            from .distributed import run_ray
            try:
                run_ray(task, plan.rows, sink, opts.model, opts.device, opts.dtype, engine_options,
                        address=opts.ray.address, workers=opts.ray.workers,
                        num_gpus_per_worker=opts.ray.num_gpus_per_worker, cpus_per_worker=opts.ray.cpus_per_worker,
                        should_stop=lambda: stop.requested)
            except RuntimeError as e:
                raise RunFailed(EXIT_FATAL, str(e)) from e
        else:
            run_pipeline(engine, plan.rows, sink, should_stop=lambda: stop.requested)
    except OSError as e:
        raise RunFailed(EXIT_FATAL, f"{e.filename or out}: cannot write results ({e.strerror or e})") from e
    finally:
        with write_lock:
            finished.set()
            try:
                writer.close()
            except OSError as e:
                raise RunFailed(EXIT_FATAL, f"{e.filename or out}: cannot write results ({e.strerror or e})") from e
            finally:
                stop.event.set()  # releases the flush thread
        if renderer is not None:
            renderer.write_index()


# -- compaction ------------------------------------------------------------------------------
def compact(out: Path) -> tuple[int, int]:
    """Rewrite `out` keeping current rows only; returns (rows before, rows after).

    Holds the dataset lock exclusively (runs hold it shared: exit 4 while one runs). The new
    parts get higher sequence numbers than every old part and are renamed into place before
    the old parts are removed, so a reader or a crash at any moment sees the same current rows.
    """
    import pyarrow.parquet as pq

    from .dataset import META_KEY, current, next_seq, part_name, quarantine, read_parts, scan
    from .output import SCHEMA, OutputLock

    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"{out}: no such results folder")
    with OutputLock(out, whole_dataset=True):
        found = scan(out)
        if found.corrupt:
            dest = quarantine(found.corrupt, out)
            log.warning("moved %d unreadable parts to %s", len(found.corrupt), dest)
        parts = found.parts
        if not parts:
            return 0, 0
        table = read_parts(parts, SCHEMA)
        kept = current(table, keep_order=True)
        order = kept.column("_order").to_pylist()
        groups: dict[str, list[int]] = {}  # rows by the settings of the part they come from
        for row, rank in enumerate(order):
            key = json.dumps(parts[rank].settings or parts[rank].metadata, sort_keys=True, default=str)
            groups.setdefault(key, []).append(row)
        seq = next_seq(parts)
        for rows in groups.values():
            newest = parts[max(order[r] for r in rows)]
            meta = {**newest.metadata, "seq": seq, "compacted_from": len(parts)}
            group = kept.take(pa.array(rows, pa.int64())).drop_columns(["_order"])
            group = group.replace_schema_metadata({META_KEY: json.dumps(meta, default=str).encode()})
            name = part_name(seq, "shard000of001")
            tmp = out / f"_tmp-{name}.inprogress"
            pq.write_table(group, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, out / name)
            seq += 1
        for p in parts:
            p.path.unlink()
        return table.num_rows, kept.num_rows
