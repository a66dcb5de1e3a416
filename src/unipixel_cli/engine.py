"""Batched inference: manifest rows → media decode → batched LLM → SAM 2 per video → result rows.

`Engine` is a per-batch callable (rows in, result rows out) so any host can drive it; the
local pipeline (`run_pipeline`) additionally decodes media ahead on worker threads and
RLE-encodes/writes behind on another, so the model is rarely waiting on the CPU.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from .manifest import ManifestRow, RowError
from .media import BlockReader, Media, MediaError, open_media
from .model.loading import Processor
from .model.preprocess import MIN_PIXELS, max_pixels_for, sam2_transform
from .model.prompting import chat_text, make_request, video_inputs
from .model.unipixel import LLMRequest, MaskJob, UniPixel, to_device
from .output import rle_encode
from .validation import check_row, frame_range, llm_frames

log = logging.getLogger(__name__)


@dataclass
class EngineOptions:
    sample_frames: int = 16
    propagate: str = "sampled"  # sampled | all
    max_new_tokens: int = 512
    batch_size: int = 8
    sam2_chunk: int = 16
    prefetch_workers: int = 2
    # each row's output independent of the rows batched with it (bf16): see UniPixel.batch_invariant
    batch_invariant: bool = False


@dataclass
class Prepared:
    """A request after media decode and preprocessing (CPU work, runs ahead of the GPU)."""

    mrow: ManifestRow
    media: Media
    llm_indices: list[int]
    sam_indices: list[int]
    llm_frames: np.ndarray
    sam_frames: np.ndarray  # the sampled frames as SAM 2 sees them (differ from the LLM's only with alpha)
    request: LLMRequest
    timings: dict = field(default_factory=dict)


class StreamedMasks:
    """A request's masks, RLE-encoded frame by frame on a helper thread while SAM 2 is still
    propagating: a long `propagate all` video holds RLEs, never all its dense masks."""

    def __init__(self, pool: ThreadPoolExecutor, num_objects: int, num_frames: int, max_pending: int = 32) -> None:
        self.pool = pool
        self.num_objects = num_objects
        self.frames: list[Future | None] = [None] * num_frames
        self.pending: deque[Future] = deque()
        self.max_pending = max_pending

    def __call__(self, t: int, masks: torch.Tensor) -> None:
        while len(self.pending) >= self.max_pending:  # back-pressure: dense frames never pile up
            self.pending.popleft().result()
        future = self.pool.submit(lambda m: [rle_encode(x) for x in m], masks.numpy())
        self.frames[t] = future
        self.pending.append(future)

    def per_object(self) -> list[list[dict]]:
        """`[n_obj][T]` COCO RLEs (waits for the encoder)."""
        if not self.num_objects:
            return []
        per_frame = [f.result() for f in self.frames]
        return [[frame[k] for frame in per_frame] for k in range(self.num_objects)]


@dataclass
class Inferred:
    prepared: Prepared
    generated_ids: list[int]
    masks: torch.Tensor | None  # [n_obj, T, H, W] bool, unless streamed
    scores: list[float]
    streamed: StreamedMasks | None = None

    def rles(self) -> list[list[dict]]:
        if self.streamed is not None:
            return self.streamed.per_object()
        return [[rle_encode(m) for m in self.masks[k].numpy()] for k in range(self.masks.shape[0])]


def error_row(task: str, err: RowError | None = None, mrow: ManifestRow | None = None,
              message: str = "") -> dict:
    if err is not None:
        return {"id": err.id, "task": task, "line": err.line, "media": err.media, "prompt": err.prompt,
                "status": "error", "error": err.message, "extra": err.extra}
    row = mrow.row
    return {"id": mrow.id, "task": task, "line": mrow.line, "media": row.media, "media_path": str(mrow.media_path),
            "prompt": getattr(row, "prompt", None) or getattr(row, "question", None),
            "status": "error", "error": f"line {mrow.line}: {message}", "extra": mrow.extra}


def pixel_budget(row, sample_frames: int, num_frames: int) -> tuple[int, int]:
    """(min, max) pixels per LLM frame: the row's own, else the training budget."""
    return row.min_pixels or MIN_PIXELS, row.max_pixels or max_pixels_for(sample_frames, num_frames)


def second_per_grid(row) -> float:
    """Seconds per temporal patch (2 frames) for MRoPE, from the sampled frames' rate; frame
    lists count as 2 fps (1.0), as Qwen's vision utils give them."""
    return 2.0 / row.sample_fps if row.sample_fps else 1.0


class Engine:
    task = "segment"

    def __init__(self, model: UniPixel, processor: Processor, options: EngineOptions) -> None:
        self.model = model
        self.processor = processor
        self.options = options
        model.batch_invariant = options.batch_invariant
        self.rle_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rle")
        self.read_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frames")  # decode-ahead

    # -- stage 1: decode + preprocess (thread-safe, CPU) --------------------------------
    def prepare(self, mrow: ManifestRow) -> Prepared:
        t0 = time.perf_counter()
        row = mrow.row
        media = open_media(mrow.media_path, getattr(mrow.row, "frame_files", None))
        check_row(row, media)  # the checks `unipixel validate` runs
        start, end = frame_range(row, media)
        sample = row.sample_frames or self.options.sample_frames
        llm_idx = llm_frames(row, media, sample)
        propagate = getattr(row, "propagate", None) or self.options.propagate
        sam_idx = list(range(start, end)) if propagate == "all" else llm_idx
        frames, sam_frames = media.read_views(llm_idx)
        pv, grid, _ = video_inputs(self.processor, frames, *pixel_budget(row, sample, len(llm_idx)))
        text = chat_text(self.processor, row.prompt, answer_prefix=row.answer_prefix or "")
        req = make_request(self.processor, text, pv, grid,
                           max_new_tokens=row.max_new_tokens or self.options.max_new_tokens,
                           second_per_grid=second_per_grid(row))
        return Prepared(mrow, media, llm_idx, sam_idx, frames, sam_frames, req,
                        {"decode": time.perf_counter() - t0})

    # -- stage 2: model (GPU) -------------------------------------------------------------
    def infer(self, batch: list[Prepared]) -> list[Inferred | tuple[Prepared, str]]:
        """LLM on the whole batch, then SAM 2 per video.

        A failure splits the batch and retries the halves, so CUDA OOM costs only batch size
        and any other error ends up on the one request that causes it, as an error row.
        """
        try:
            return self._infer(batch)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            reason = "CUDA out of memory even at batch size 1"
        except Exception as e:
            log.debug("batch of %d failed", len(batch), exc_info=True)
            reason = f"inference failed: {type(e).__name__}: {e}"
        if len(batch) == 1:
            log.warning("line %d: %s", batch[0].mrow.line, reason)
            return [(batch[0], reason)]
        half = len(batch) // 2
        log.warning("batch of %d failed (%s); retrying as %d + %d", len(batch), reason.split(":")[0], half,
                    len(batch) - half)
        return self.infer(batch[:half]) + self.infer(batch[half:])

    def _infer(self, batch: list[Prepared]) -> list[Inferred]:
        t0 = time.perf_counter()
        results = self.model.run_llm([p.request for p in batch])
        llm_s = (time.perf_counter() - t0) / len(batch)
        t1 = time.perf_counter()
        jobs = [self.mask_job(p, self.model.seg_tokens(res.seg_hidden)) for p, res in zip(batch, results)]
        for job in jobs:
            job.on_frame = StreamedMasks(self.rle_pool, job.seg_tokens.shape[0], job.num_frames)
        # every object of every video in the batch goes through SAM 2 together (per video length)
        self.model.decode_masks_batched(jobs, chunk_size=self.options.sam2_chunk)
        sam_s = (time.perf_counter() - t1) / len(batch)
        out = []
        for p, res, job in zip(batch, results, jobs):
            p.timings.update(llm=llm_s, sam2=sam_s)
            out.append(Inferred(p, res.generated_ids, None, job.scores, streamed=job.on_frame))
        return out

    def mask_job(self, p: Prepared, seg_tokens: torch.Tensor) -> MaskJob:
        """SAM 2 work for one request: its tokens and a loader of its frames, chunk by chunk.

        Frames cross to the model's device as uint8 and are resized/normalised there: on a
        GPU that is a fraction of the float copy and of the CPU time (`propagate all` also
        decodes each chunk only when SAM 2 reaches it).
        """
        media, sam_idx, size, device = p.media, p.sam_indices, self.model.sam2_image_size, self.model.device
        scan = None if sam_idx is p.llm_indices else BlockReader(media, sam_idx, self.options.sam2_chunk,
                                                                 pool=self.read_pool)

        def load(a: int, b: int) -> torch.Tensor:
            frames = p.sam_frames[a:b] if scan is None else scan.read(a, b)
            return sam2_transform(to_device(torch.from_numpy(np.ascontiguousarray(frames)), device), size)

        return MaskJob(seg_tokens, len(sam_idx), load, media.height, media.width)

    # -- stage 3: encode (CPU, runs behind) -------------------------------------------
    def finish(self, item: Inferred | tuple[Prepared, str]) -> dict:
        if isinstance(item, tuple):
            return error_row(self.task, mrow=item[0].mrow, message=item[1])
        t0 = time.perf_counter()
        p = item.prepared
        ids = item.generated_ids
        if ids and ids[-1] in self.processor.tokens.eos:
            ids = ids[:-1]
        tok = self.processor.tokenizer
        objects = []
        for k, rles in enumerate(item.rles()):
            object_id, source = self.object_label(item, k)
            objects.append({"object_id": object_id, "source": source, "score": item.scores[k], "masks": rles})
        p.timings["encode"] = time.perf_counter() - t0
        return self.extra_fields(item) | {
            "id": p.mrow.id, "task": self.task, "line": p.mrow.line, "media": p.mrow.row.media,
            "media_path": str(p.mrow.media_path),
            "prompt": self.prompt_of(p.mrow),
            "answer": self.answer_prefix(item)
            + tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip(),
            "raw_answer": tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
            "frame_indices": list(p.sam_indices), "height": p.media.height, "width": p.media.width,
            "objects": objects, "status": "ok", "error": None,
            "timings": {k: float(p.timings.get(k, 0.0)) for k in ("decode", "llm", "sam2", "encode")},
            "extra": p.mrow.extra,
        }

    def object_label(self, item: Inferred, k: int) -> tuple[int, str]:
        return k, "seg"

    def prompt_of(self, mrow: ManifestRow) -> str:
        return mrow.row.prompt

    def extra_fields(self, item: Inferred) -> dict:
        return {}

    def answer_prefix(self, item: Inferred) -> str:
        return item.prepared.mrow.row.answer_prefix or ""

    # -- per-batch callable -------------------------------------------------------------
    def __call__(self, rows: list[ManifestRow]) -> list[dict]:
        prepared, out = [], []
        for r in rows:
            try:
                prepared.append(self.prepare(r))
            except (MediaError, ValueError) as e:
                out.append(error_row(self.task, mrow=r, message=str(e)))
        for i in range(0, len(prepared), self.options.batch_size):
            out.extend(self.finish(x) for x in self.infer(prepared[i:i + self.options.batch_size]))
        return out


def _prepared_stream(engine: Engine, rows: Iterable[ManifestRow], workers: int,
                     lookahead: int) -> Iterator[tuple[Prepared | dict, bool]]:
    """Decode/preprocess ahead on worker threads (bounded), preserving manifest order.

    Yields `(item, next_is_ready)` so the consumer knows whether waiting would idle the model.
    """
    def safe_prepare(r: ManifestRow):
        try:
            return engine.prepare(r)
        except (MediaError, ValueError) as e:
            return error_row(engine.task, mrow=r, message=str(e))
        except Exception as e:  # a bad row never takes the run down
            log.exception("preparing line %d failed", r.line)
            return error_row(engine.task, mrow=r, message=f"{type(e).__name__}: {e}")

    # one intra-op thread per decoder: the model's own torch threads keep the cores
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode",
                            initializer=torch.set_num_threads, initargs=(1,)) as pool:
        pending: list = []
        for r in rows:
            pending.append(pool.submit(safe_prepare, r))
            if len(pending) >= lookahead:
                item = pending.pop(0).result()
                yield item, pending[0].done()
        while pending:
            item = pending.pop(0).result()
            yield item, bool(pending) and pending[0].done()


def run_pipeline(engine: Engine, rows: list[ManifestRow], sink: Callable[[dict], None],
                 should_stop: Callable[[], bool] = lambda: False) -> None:
    """Run rows through the engine: prefetch → length-grouped batches → writer thread.

    Once `should_stop()` is true no new batch starts; rows already finished are still written.
    """
    opts = engine.options
    out_q: queue.Queue = queue.Queue(maxsize=4 * opts.batch_size)
    failure: list[BaseException] = []

    def writer():
        while (item := out_q.get()) is not None:
            try:
                sink(item if isinstance(item, dict) else engine.finish(item))
            except BaseException as e:  # surfaced to the main thread below
                failure.append(e)
                return

    wt = threading.Thread(target=writer, name="writer", daemon=True)
    wt.start()
    window: list[Prepared] = []

    def flush_window(final: bool) -> None:
        # group requests of similar length so padding stays small
        window.sort(key=lambda p: len(p.request.input_ids) if p.request is not None else 0)
        while len(window) >= (1 if final else opts.batch_size) and not should_stop():
            batch = [window.pop(0) for _ in range(min(opts.batch_size, len(window)))]
            for item in engine.infer(batch):
                out_q.put(item)
            if failure:
                raise failure[0]

    for item, next_ready in _prepared_stream(engine, rows, opts.prefetch_workers, lookahead=2 * opts.batch_size):
        if should_stop():
            break
        if isinstance(item, dict):
            out_q.put(item)
            continue
        window.append(item)
        # a wider window groups lengths better, but never at the price of an idle model
        if len(window) >= 2 * opts.batch_size or (len(window) >= opts.batch_size and not next_ready):
            flush_window(final=False)
    flush_window(final=True)
    out_q.put(None)
    wt.join()
    if failure:
        raise failure[0]
