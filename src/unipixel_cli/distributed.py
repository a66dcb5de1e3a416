"""Run the same engine on a Ray cluster with Ray Data (optional extra `unipixel[ray]`).

The driver validates the manifest, applies resume and `--shard` exactly as a local run, and
writes the results with the same writer; actors (one model per GPU) run `Engine.__call__`
on batches of rows. A crashed actor is restarted by Ray and its batch re-run; since only the
driver writes, and it skips ids it has already written, no row is lost or duplicated.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa

from .engine import EngineOptions
from .manifest import ROW_MODELS, ManifestRow
from .output import storable_row

log = logging.getLogger(__name__)


class UniPixelActor:
    """Ray Data callable class: loads the model once, then maps batches of rows to results."""

    def __init__(self, task: str, model: str, device: str, dtype: str, options: dict) -> None:
        from .engine import Engine
        from .model.loading import load_unipixel
        from .weights import resolve_model

        self.task = task
        unipixel, processor = load_unipixel(resolve_model(model), device=device, dtype=dtype)
        if task == "pixelqa":
            from .pixelqa import PixelQAEngine
            self.engine = PixelQAEngine(unipixel, processor, EngineOptions(**options))
        else:
            self.engine = Engine(unipixel, processor, EngineOptions(**options))

    def __call__(self, batch: pa.Table) -> pa.Table:
        model = ROW_MODELS[self.task]
        rows = [ManifestRow(int(r["line"]), r["id"], model.model_validate_json(r["row"]), Path(r["media_path"]),
                            r.get("extra")) for r in batch.to_pylist()]
        return pa.concat_tables([storable_row(r) for r in self.engine(rows)])


def run_ray(task: str, rows: list[ManifestRow], sink: Callable[[dict], None], model: str, device: str, dtype: str,
            options: EngineOptions, address: str | None = None, workers: int = 1,
            num_gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
            actor_cls: type = UniPixelActor, should_stop: Callable[[], bool] = lambda: False) -> None:
    # Ray's `uv run` hook would make every worker re-resolve this project with uv; the
    # workers use the driver's environment instead (install unipixel on every node)
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
    except ImportError as e:
        raise RuntimeError("--engine ray needs Ray: install the extra with `uv sync --extra ray` "
                           "(or `pip install 'unipixel[ray]'`)") from e
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, ignore_reinit_error=True, logging_level=logging.WARNING,
                 log_to_driver=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        _check_resources(ray, workers, cpus_per_worker, num_gpus_per_worker, fixed_cluster=address is None)
        if not rows:
            return
        if Path(model).expanduser().exists():  # workers do not run in the driver's folder
            model = str(Path(model).expanduser().resolve())
        actor_kwargs = {"task": task, "model": model, "device": device, "dtype": dtype, "options": asdict(options)}
        for row in _map_rows(ray, rows, actor_cls, actor_kwargs, options.batch_size, workers, cpus_per_worker,
                             num_gpus_per_worker):
            sink(row)
            if should_stop():  # results of batches in flight are dropped; they rerun on resume
                break
    finally:
        if started_here:
            ray.shutdown()


def _check_resources(ray, workers: int, cpus: float, gpus: float, fixed_cluster: bool) -> None:
    have = ray.cluster_resources()
    need = {"CPU": workers * cpus, "GPU": workers * gpus}
    short = [f"{k} {need[k]:g} > {have.get(k, 0):g}" for k in need if need[k] > have.get(k, 0)]
    if short and fixed_cluster:
        # a local cluster never grows: Ray Data would wait forever
        raise RuntimeError(f"{workers} workers need more than this Ray cluster has ({', '.join(short)}); "
                           "lower --workers, --cpus-per-worker or --num-gpus-per-worker")


def _map_rows(ray, rows: list[ManifestRow], actor_cls: type, actor_kwargs: dict, batch_size: int, workers: int,
              cpus: float, gpus: float):
    """Result rows from a Ray Data actor pool, each id once even when a batch is retried."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    items = [{"line": r.line, "id": r.id, "row": r.row.model_dump_json(exclude_none=True),
              "media_path": str(r.media_path.resolve()), "extra": r.extra} for r in rows]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items) // max(1, batch_size)))
    results = ds.map_batches(
        actor_cls, fn_constructor_kwargs=actor_kwargs, batch_size=batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers), num_gpus=gpus or None, num_cpus=cpus,
        # a dead actor is replaced and its batch re-run; an actor that cannot start fails the run
        max_restarts=3, max_task_retries=-1)
    seen: set[str] = set()
    for batch in results.iter_batches(batch_format="pyarrow", batch_size=None):
        for row in batch.to_pylist():
            if row["id"] not in seen:  # a retried batch never yields a row twice
                seen.add(row["id"])
                yield row
