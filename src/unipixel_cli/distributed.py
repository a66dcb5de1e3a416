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
from .output import SCHEMA, _normalise

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
        rows = [ManifestRow(int(r["line"]), r["id"], model.model_validate_json(r["row"]), Path(r["media_path"]))
                for r in batch.to_pylist()]
        return pa.Table.from_pylist([_normalise(r) for r in self.engine(rows)], schema=SCHEMA)


def run_ray(task: str, rows: list[ManifestRow], sink: Callable[[dict], None], model: str, device: str, dtype: str,
            options: EngineOptions, address: str | None = None, workers: int = 1,
            num_gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
            actor_cls: type = UniPixelActor) -> None:
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
        _run_dataset(ray, task, rows, sink, model, device, dtype, options, address, workers,
                     num_gpus_per_worker, cpus_per_worker, actor_cls)
    finally:
        if started_here:
            ray.shutdown()


def _run_dataset(ray, task, rows, sink, model, device, dtype, options, address, workers, num_gpus_per_worker,
                 cpus_per_worker, actor_cls) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    have = ray.cluster_resources()
    need = {"CPU": workers * cpus_per_worker, "GPU": workers * num_gpus_per_worker}
    short = [f"{k} {need[k]:g} > {have.get(k, 0):g}" for k in need if need[k] > have.get(k, 0)]
    if short and address is None:
        # a fixed local cluster never grows: Ray Data would wait forever
        raise RuntimeError(f"{workers} workers need more than this Ray cluster has ({', '.join(short)}); "
                           "lower --workers, --cpus-per-worker or --num-gpus-per-worker")
    if not rows:
        return
    if Path(model).expanduser().exists():  # workers do not run in the driver's folder
        model = str(Path(model).expanduser().resolve())
    items = [{"line": r.line, "id": r.id, "row": r.row.model_dump_json(exclude_none=True),
              "media_path": str(r.media_path.resolve())} for r in rows]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items) // max(1, options.batch_size)))
    results = ds.map_batches(
        actor_cls,
        fn_constructor_kwargs={"task": task, "model": model, "device": device, "dtype": dtype,
                               "options": asdict(options)},
        batch_size=options.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=num_gpus_per_worker or None, num_cpus=cpus_per_worker,
        # a dead actor is replaced and its batch re-run; an actor that cannot start fails the run
        max_restarts=3, max_task_retries=-1)
    seen: set[str] = set()
    for batch in results.iter_batches(batch_format="pyarrow", batch_size=None):
        for row in batch.to_pylist():
            if row["id"] not in seen:  # a retried batch never writes a row twice
                seen.add(row["id"])
                sink(row)
