"""One framework for every `unipixel bench NAME` benchmark of the authors' table.

A benchmark is a `Benchmark` subclass registered with `@register`. The CLI builds one
`unipixel bench NAME` command per registered class, and `run_benchmark` drives it:

    load items ─→ request rows ─→ batched engine (resumable) ─→ results dataset
        │                                                            │
        └──────────── score each item from its `Prediction` ←────────┘  (or `--preds DIR`)
                              │
                              └─→ summary.json, items.csv, table next to the published numbers

How to add a benchmark
----------------------
1. Subclass `Benchmark` in `bench/<name>.py` and set the class attributes: `name` (the CLI
   command), `title`, `task` ("segment" or "pixelqa"), `splits` (first = default),
   `layout` (one line: the files the loader opens), `published` (the authors' README
   numbers: `{"row label": {"metric": (3B, 7B)}}`), `metrics` (per-item metric columns).
2. `load_items()` opens exactly the files the authors' dataset class opens and returns
   `Item`s: a unique `id`, the `request` (a manifest row without `id`: `prompt`/`question`,
   media, `sample_frames`, `propagate`, ...) and whatever ground truth `score` needs. Use
   `self.file(...)`, `self.load_json(...)`, `safe_load_pickle(...)`: a missing file raises
   `BenchDataError` naming it; a missing key (KeyError, ...) becomes one in `items()`.
3. `score(item, prediction)` returns `{metric: value}` for one item, exactly like the
   authors' evaluator. It may raise: the framework turns any exception (missing prediction,
   mis-sized mask, undecodable file) into a zero score for the item and counts it as failed.
4. `summarize(results)` averages `ItemResult`s in the authors' order and returns the dict
   their evaluator writes (same metric names); `table(summary)` gives the printed rows.
5. Import the module in `bench/__init__.py` (the import registers it).
`Prediction` carries `masks` (per frame, by name; `RowFrameMasks` maps a result row's
`frame_indices` onto `Item.frames`), `answer` (text) and `row` (our full result row), or
`error` (failed request / missing prediction: scored 0 without calling `score`).
Video benchmarks set `png_layout = True` so `--preds` also accepts the authors' PNG folders
`<pred>/<video>/<exp_id>/<frame>.png` and runs export them (see `export_pngs`). Splits
without public ground truth return False from `has_ground_truth` and get a submission zip.
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing as mp
import pickle
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ..media import natural_key
from ..output import part_files, read_results, rle_decode


class BenchDataError(Exception):
    """The dataset folder cannot be used; the message names the file and the problem."""


# -- data ---------------------------------------------------------------------------------


@dataclass
class Item:
    """One scored unit (an expression, a question): its request and its ground truth."""

    id: str
    request: dict | None  # manifest row without "id"; None when no request can be built
    video: str = ""  # folder name in the authors' PNG layout (video benchmarks)
    exp_id: str = ""  # sub-folder name in the authors' PNG layout
    frames: list[str] = field(default_factory=list)  # frame names (no extension) of the video
    gt: Any = None  # benchmark-specific ground truth
    info: dict = field(default_factory=dict)  # extra columns for the per-item CSV (type, text)


class FrameMasks:
    """Predicted masks of one item by frame name, as 8-bit grayscale arrays (0/255 like the
    authors' PNGs). `names()` lists the frames present; `read` returns None for a missing one."""

    def names(self) -> list[str]:
        raise NotImplementedError

    def read(self, name: str) -> np.ndarray | None:
        raise NotImplementedError


class PngFrameMasks(FrameMasks):
    """The authors' layout: `<folder>/<frame>.png`, read as 8-bit grayscale."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted((p.stem for p in self.folder.glob("*.png")), key=natural_key)

    def read(self, name: str) -> np.ndarray | None:
        path = self.folder / f"{name}.png"
        if not path.is_file():
            return None
        with Image.open(path) as img:
            return np.asarray(img.convert("L"))


class RowFrameMasks(FrameMasks):
    """The first `<|seg|>` object of one of our result rows (the authors score only the
    first), keyed by the item's frame names through the row's `frame_indices`. A row that
    answered without `<|seg|>` reads as empty masks on every frame: the authors' inference
    writes zeros for it and their evaluator scores those."""

    def __init__(self, row: dict, frames: list[str]) -> None:
        objects = row.get("objects")
        self.has_mask = objects is not None and len(objects) > 0
        masks = list(objects[0]["masks"]) if self.has_mask else []
        given = row.get("frame_indices")  # a numpy array when read back through pandas
        indices = [] if given is None else [int(i) for i in given]
        self._by_name = {frames[i]: m for i, m in zip(indices, masks) if 0 <= i < len(frames)}
        self._order = [frames[i] for i in indices if 0 <= i < len(frames)] if self.has_mask else list(frames)
        self._size = (int(row.get("height") or 0), int(row.get("width") or 0))

    def names(self) -> list[str]:
        return [n for n in self._order if n in self._by_name or not self.has_mask]

    def read(self, name: str) -> np.ndarray | None:
        if not self.has_mask:
            return np.zeros(self._size, np.uint8) if name in self._order else None
        rle = self._by_name.get(name)
        return None if rle is None else rle_decode(rle).astype(np.uint8) * 255


@dataclass
class Prediction:
    """What the model produced for one item (from a run, our results dataset or PNGs)."""

    masks: FrameMasks | None = None
    answer: str | None = None  # text answer (QA benchmarks)
    row: dict | None = None  # our result row, when the prediction comes from one
    error: str | None = None  # the request failed / the prediction is missing: scores 0

    def frame_size(self, first_frame: str) -> tuple[int, int]:
        """(h, w) of the predicted masks, read off the item's first frame (missing: scored 0)."""
        first = self.masks.read(first_frame)
        if first is None:
            raise FileNotFoundError(f"no prediction for frame {first_frame}")
        return first.shape


@dataclass
class ItemResult:
    item: Item
    scores: dict[str, float]
    error: str | None = None  # why the item scored 0 (failed request, missing or bad prediction)
    no_mask: bool = False  # the model answered without <|seg|>: scored as empty masks

    @property
    def failed(self) -> bool:
        return self.error is not None


# -- benchmark description ----------------------------------------------------------------


class Benchmark(ABC):
    name: ClassVar[str]
    title: ClassVar[str]
    task: ClassVar[str] = "segment"  # segment | pixelqa
    splits: ClassVar[tuple[str, ...]] = ("valid",)
    layout: ClassVar[str] = ""
    published: ClassVar[dict[str, dict[str, tuple[float, float]]]] = {}
    metrics: ClassVar[tuple[str, ...]] = ()
    png_layout: ClassVar[bool] = False  # `--preds` accepts <pred>/<video>/<exp_id>/<frame>.png

    def __init__(self, data: Path, split: str | None = None) -> None:
        self.data = Path(data).expanduser().resolve()  # relative --data: against the working directory
        self.split = split or self.splits[0]
        if self.split not in self.splits:
            raise BenchDataError(f"{self.name}: unknown split {self.split!r} (choose from {', '.join(self.splits)})")
        if not self.data.is_dir():
            raise BenchDataError(f"{self.data}: dataset folder not found")

    # required ---------------------------------------------------------------------------
    @abstractmethod
    def load_items(self) -> list[Item]:
        """Items in the authors' order; raises BenchDataError naming a missing file/key."""

    @abstractmethod
    def score(self, item: Item, prediction: Prediction) -> dict[str, float]:
        """The authors' per-item metrics; may raise (→ scored 0, counted as failed)."""

    @abstractmethod
    def summarize(self, results: list[ItemResult]) -> dict:
        """The authors' summary (their metric names and averaging order)."""

    @abstractmethod
    def table(self, summary: dict) -> list[tuple[str, dict[str, float]]]:
        """Printed rows: (label, {metric: value in the published scale})."""

    def items(self) -> list[Item]:
        """`load_items`, with malformed annotations (a missing key, a wrong type) reported as one
        BenchDataError line instead of a traceback."""
        try:
            return self.load_items()
        except BenchDataError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OSError) as e:
            raise BenchDataError(f"{self.data}: {self.title} annotations are not in the expected format "
                                 f"({type(e).__name__}: {e}); expected {self.layout}") from e

    # optional ---------------------------------------------------------------------------
    def has_ground_truth(self) -> bool:
        return True

    def zero_scores(self, item: Item) -> dict[str, float]:
        return {m: 0.0 for m in self.metrics}

    def file(self, *parts: str) -> Path:
        """A dataset file that must exist."""
        path = self.data.joinpath(*parts)
        if not path.exists():
            raise BenchDataError(f"{path}: not found (expected the {self.title} layout: {self.layout})")
        return path

    def load_json(self, *parts: str) -> Any:
        path = self.file(*parts)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BenchDataError(f"{path}: not valid JSON ({e})") from e

    def extra_reports(self, results: list[ItemResult], summary: dict, out: Path) -> list[Path]:
        """More files in the authors' own names/format (e.g. ReVOS's revos_valid.json/.csv)."""
        return []

    def submission(self, predictions: Callable[[Item], Prediction], items: list[Item], out: Path) -> Path | None:
        """Write the evaluation server's upload for a split without public masks."""
        return None


REGISTRY: dict[str, type[Benchmark]] = {}


def register(cls: type[Benchmark]) -> type[Benchmark]:
    if cls.name in REGISTRY:
        raise ValueError(f"benchmark {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


# -- restricted unpickling ----------------------------------------------------------------


class _DataOnlyUnpickler(pickle.Unpickler):
    """Refuses every global: only the builtin containers, numbers, strings and bytes that
    pickle encodes with its own opcodes can be built."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        raise BenchDataError(f"{self.path}: refusing to unpickle {module}.{name} (only builtin containers, "
                             "numbers, strings and bytes are allowed in benchmark annotations)")


def safe_load_pickle(path: str | Path) -> Any:
    """Load a downloaded annotation pickle (Ref-DAVIS17 mask_dict.pkl, REFER refs(*).p) without
    ever executing code from it."""
    path = Path(path)
    if not path.is_file():
        raise BenchDataError(f"{path}: not found")
    try:
        with open(path, "rb") as f:
            return _DataOnlyUnpickler(io.BufferedReader(f), path).load()
    except BenchDataError:
        raise
    except Exception as e:  # truncated or not a pickle at all
        raise BenchDataError(f"{path}: cannot read pickle ({type(e).__name__}: {e})") from e


# -- predictions --------------------------------------------------------------------------


def is_results_dataset(path: Path) -> bool:
    return bool(part_files(path))


def results_by_id(results_dir: Path) -> dict[str, dict]:
    """Current row per id (the last written wins, so a retried request supersedes its error)."""
    df = read_results(results_dir)
    return {r["id"]: r for r in df.to_dict("records")}


def prediction_from_row(row: dict | None, item: Item) -> Prediction:
    if row is None:
        return Prediction(error="no result row for this item")
    if row.get("status") != "ok":
        return Prediction(row=row, error=f"request failed: {row.get('error')}")
    return Prediction(masks=RowFrameMasks(row, item.frames), answer=row.get("answer"), row=row)


def prediction_source(bench: Benchmark, preds: Path) -> Callable[[Item], Prediction]:
    """`--preds DIR`: our results dataset for every benchmark, or the authors' PNG layout."""
    preds = Path(preds).expanduser().resolve()
    if not preds.is_dir():
        raise BenchDataError(f"{preds}: predictions folder not found")
    if is_results_dataset(preds):
        rows = results_by_id(preds)
        return lambda item: prediction_from_row(rows.get(item.id), item)
    if bench.png_layout:
        def from_pngs(item: Item) -> Prediction:
            folder = preds / item.video / item.exp_id
            if not folder.is_dir():
                return Prediction(error=f"{folder}: prediction folder not found")
            return Prediction(masks=PngFrameMasks(folder))
        return from_pngs
    raise BenchDataError(f"{preds}: not a unipixel results dataset (no part-*.parquet files)")


# -- scoring ------------------------------------------------------------------------------

_POOL_STATE: dict = {}


def score_item(bench: Benchmark, item: Item, prediction: Prediction) -> ItemResult:
    """Never raises: a failed request, a missing/mis-sized/undecodable prediction scores 0."""
    if prediction.error is not None:
        return ItemResult(item, bench.zero_scores(item), prediction.error)
    no_mask = isinstance(prediction.masks, RowFrameMasks) and not prediction.masks.has_mask
    try:
        return ItemResult(item, bench.score(item, prediction), no_mask=no_mask)
    except Exception as e:  # scoring code raising on bad predictions is expected, see docstring
        return ItemResult(item, bench.zero_scores(item), f"{type(e).__name__}: {e}")


def _score_in_worker(i: int) -> tuple[dict[str, float], str | None, bool]:
    bench, items, source = _POOL_STATE["job"]
    result = score_item(bench, items[i], source(items[i]))
    return result.scores, result.error, result.no_mask  # the item (and its ground truth) stays in the parent


def score_items(bench: Benchmark, items: list[Item], source: Callable[[Item], Prediction],
                workers: int = 1) -> list[ItemResult]:
    """Scores in item order; `workers` > 1 forks processes (scoring is CPU-bound numpy)."""
    if workers <= 1 or len(items) < 2:
        return [score_item(bench, item, source(item)) for item in items]
    _POOL_STATE["job"] = (bench, items, source)
    try:
        with mp.get_context("fork").Pool(workers) as pool:
            scored = pool.map(_score_in_worker, range(len(items)), chunksize=max(1, len(items) // (4 * workers)))
        return [ItemResult(item, *values) for item, values in zip(items, scored)]
    finally:
        _POOL_STATE.pop("job", None)


def mean(values: Iterable[float]) -> float:
    """np.mean as the authors use it (nan for an empty list, without the warning)."""
    values = list(values)
    return float(np.mean(values)) if values else math.nan


# -- requests and exports -----------------------------------------------------------------


def request_rows(items: list[Item]) -> list[dict]:
    return [{"id": item.id, **item.request} for item in items if item.request is not None]


def write_manifest(items: list[Item], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in request_rows(items)), encoding="utf-8")
    return path


def frame_size(item: Item) -> tuple[int, int]:
    """(H, W) of the item's first frame file, for writing empty masks of a failed request."""
    req = item.request or {}
    folder, files = Path(req.get("frames", "")), req.get("frame_files") or []
    if not files:
        raise BenchDataError(f"{item.id}: no frame files to size empty masks")
    with Image.open(folder / files[0]) as img:
        return img.size[::-1]


def export_pngs(items: list[Item], source: Callable[[Item], Prediction], out: Path) -> None:
    """Predictions in the authors' layout `<out>/<video>/<exp_id>/<frame>.png` (0/255). As in
    their inference script, a request that failed is written as empty masks."""
    for item in items:
        folder = out / item.video / item.exp_id
        folder.mkdir(parents=True, exist_ok=True)
        pred = source(item)
        empty = None
        for name in item.frames:
            m = pred.masks.read(name) if pred.masks is not None else None
            if m is None:
                if empty is None:
                    try:
                        empty = np.zeros(frame_size(item), np.uint8)
                    except (OSError, BenchDataError):
                        break  # no readable frame to size it: the item is scored as failed anyway
                m = empty
            Image.fromarray(m, mode="L").save(folder / f"{name}.png")


def zip_folder(folder: Path, zip_path: Path, prefix: str = "") -> Path:
    """Zip every file under `folder`, stored under `prefix/` + its relative path."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, f"{prefix}{p.relative_to(folder).as_posix()}")
    return zip_path


# -- reports ------------------------------------------------------------------------------


@dataclass
class Report:
    summary: dict
    results: list[ItemResult]
    summary_path: Path
    csv_path: Path

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.results if r.failed]


def write_reports(bench: Benchmark, results: list[ItemResult], out: Path) -> Report:
    """`summary.json` (the authors' metric names, plus `items`: counts and the failed ids)
    and `items.csv` (one row per item)."""
    out.mkdir(parents=True, exist_ok=True)
    summary = bench.summarize(results)
    failed = [r for r in results if r.failed]
    summary_doc = {**summary, "items": {"total": len(results), "scored": len(results) - len(failed),
                                        "failed": len(failed),
                                        "no_mask": sum(r.no_mask for r in results),
                                        "failures": [{"id": r.item.id, "error": r.error} for r in failed]}}
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary_doc, indent=4))
    csv_path = out / "items.csv"
    info_keys = list(dict.fromkeys(k for r in results for k in r.item.info))
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "video", "exp_id", *info_keys, *bench.metrics, "status", "error"])
        for r in results:
            writer.writerow([r.item.id, r.item.video, r.item.exp_id, *(r.item.info.get(k, "") for k in info_keys),
                             *(r.scores.get(m, "") for m in bench.metrics), "failed" if r.failed else "scored",
                             r.error or ""])
    bench.extra_reports(results, summary, out)
    return Report(summary, results, summary_path, csv_path)


RunRequests = Callable[[Path, Path], int]
"""(manifest, results_dir) → exit code: the same orchestration `unipixel segment` uses."""


@dataclass
class BenchOutcome:
    report: Report | None
    requests_failed: int
    exit_code: int
    submission: Path | None = None
    preds_dir: Path | None = None


def run_benchmark(bench: Benchmark, out: Path, run_requests: RunRequests | None, preds: Path | None = None,
                  limit: int | None = None, workers: int = 1, export_png: Path | None = None,
                  score: bool = True) -> BenchOutcome:
    """Load → (run the requests | read `preds`) → score → reports.

    With `score=False` (a shard of a sharded run) it stops after the requests.
    Exit code 3 when any request failed or any item could not be scored (those items score 0
    and are counted); 0 otherwise; the runner's own code (2, 4, 1) when nothing could run.
    """
    out = Path(out).expanduser().resolve()
    items = bench.items()
    if limit is not None:
        items = items[:limit]
    requests_failed = 0
    if preds is None:
        if run_requests is None:
            raise ValueError("run_requests is required without --preds")
        manifest = write_manifest(items, out / f"{bench.name}_{bench.split}_manifest.jsonl")
        results_dir = out / "results"
        code = run_requests(manifest, results_dir)
        if code not in (0, 3):
            return BenchOutcome(None, 0, code)
        if not score:
            return BenchOutcome(None, 0, code)
        rows = results_by_id(results_dir)
        requests_failed = sum(1 for i in items if i.request is None or (rows.get(i.id) or {}).get("status") != "ok")

        def source(item: Item) -> Prediction:
            return prediction_from_row(rows.get(item.id), item)
    else:
        source = prediction_source(bench, preds)
    if not bench.has_ground_truth():  # its PNGs go into the submission folder only
        sub = bench.submission(source, items, out)
        return BenchOutcome(None, requests_failed, 3 if requests_failed else 0, sub)
    preds_dir = None
    if bench.png_layout and preds is None:
        preds_dir = Path(export_png or out / "preds")
        export_pngs(items, source, preds_dir)
    results = score_items(bench, items, source, workers)
    report = write_reports(bench, results, out)
    code = 3 if requests_failed or report.failed else 0
    return BenchOutcome(report, requests_failed, code, None, preds_dir)
