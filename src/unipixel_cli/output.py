"""Results as a Parquet dataset: COCO RLE masks, atomic part files, resume, shards, lock."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from .dataset import part_name

log = logging.getLogger(__name__)

RLE = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])
OBJECT = pa.struct([
    ("object_id", pa.int32()), ("source", pa.string()), ("score", pa.float32()),
    ("masks", pa.list_(RLE)),
])
TIMINGS = pa.struct([("decode", pa.float64()), ("llm", pa.float64()), ("sam2", pa.float64()),
                     ("encode", pa.float64())])
SCHEMA = pa.schema([
    ("id", pa.string()), ("task", pa.string()), ("line", pa.int32()), ("media", pa.string()),
    ("media_path", pa.string()),
    ("prompt", pa.string()), ("answer", pa.string()), ("raw_answer", pa.string()),
    ("choice", pa.string()), ("frame_indices", pa.list_(pa.int32())), ("height", pa.int32()),
    ("width", pa.int32()), ("objects", pa.list_(OBJECT)), ("status", pa.string()),
    ("error", pa.string()), ("timings", TIMINGS),
    # hash of the row's inputs, the model and the output-affecting options (runner.fingerprint)
    ("fingerprint", pa.string()),
    ("extra", pa.string()),  # the manifest row's unknown keys, a JSON object (None when there are none)
])


def rle_encode(mask: np.ndarray) -> dict:
    """Boolean `[H, W]` mask → COCO compressed RLE with `counts` as a UTF-8 string."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("utf-8")}


def rle_decode(rle: dict) -> np.ndarray:
    counts = rle["counts"]
    coco = {"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}
    return mask_utils.decode(coco).astype(bool)


def stable_shard(row_id: str, num_shards: int) -> int:
    """Shard of an id: a hash of the id alone, so appending rows never moves existing ones."""
    return int.from_bytes(hashlib.sha1(row_id.encode()).digest()[:8], "big") % num_shards


@dataclass
class Shard:
    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        if not text:
            return cls()
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError as e:
            raise ValueError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from e
        if not (n >= 1 and 0 <= i < n):
            raise ValueError(f"--shard {text}: need 0 <= i < N")
        return cls(i, n)

    def owns(self, row_id: str) -> bool:
        return self.count == 1 or stable_shard(row_id, self.count) == self.index

    @property
    def tag(self) -> str:
        return f"shard{self.index:03d}of{self.count:03d}"


class LockHeld(RuntimeError):
    pass


class _FileLock:
    """`fcntl.flock` on a lock file of the dataset; the kernel releases it if the process dies."""

    def __init__(self, path: Path, exclusive: bool) -> None:
        self.path, self.exclusive = path, exclusive
        self.fd: int | None = None

    def acquire(self) -> None:
        from .dataset import create_lock_file

        for _ in range(10):
            if not self.path.exists():
                create_lock_file(self.path, SCHEMA)
            fd = os.open(self.path, os.O_RDONLY)
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError as e:
                os.close(fd)
                raise LockHeld(f"another run holds the lock on {self.path.parent} ({self.path.name})") from e
            try:  # the file we locked is still the one at the path (not removed meanwhile)
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return
            os.close(fd)
        raise LockHeld(f"cannot take the lock {self.path}: the file keeps changing")

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class OutputLock:
    """A run's locks on OUT_DIR: its shard exclusively, the dataset shared (compaction takes
    the dataset exclusively). Lock files are `_lock-*.parquet` (see `dataset`)."""

    def __init__(self, out_dir: Path, shard: Shard | None = None, *, whole_dataset: bool = False) -> None:
        out_dir = Path(out_dir)
        self.locks = [_FileLock(out_dir / "_lock-dataset.parquet", exclusive=whole_dataset)]
        if not whole_dataset:
            self.locks.append(_FileLock(out_dir / f"_lock-{(shard or Shard()).tag}.parquet", exclusive=True))
        self.path = self.locks[-1].path

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            for lock in self.locks:
                lock.acquire()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for lock in reversed(self.locks):
            lock.release()


def part_files(out_dir: Path) -> list[Path]:
    """The dataset's readable parts in write order (see `dataset` for what is one)."""
    from .dataset import own_parts

    return [p.path for p in own_parts(Path(out_dir))] if Path(out_dir).exists() else []


def written_ids(out_dir: Path) -> set[str]:
    """Ids already in complete part files (temporary files of killed runs are ignored)."""
    ids: set[str] = set()
    for p in part_files(out_dir):
        ids.update(pq.read_table(p, columns=["id"]).column("id").to_pylist())
    return ids


@dataclass
class ResultsWriter:
    """Buffers result rows and writes them as atomic part files of at most `flush_rows` rows."""

    out_dir: Path
    shard: Shard = field(default_factory=Shard)
    metadata: dict = field(default_factory=dict)
    flush_rows: int = 64
    flush_seconds: float = 60.0
    first_seq: int = 1  # sequence number of the first part (dataset.next_seq under the lock)
    _rows: list[pa.Table] = field(default_factory=list)  # one-row tables in SCHEMA
    _last_flush: float = field(default_factory=time.monotonic)
    _parts: int = 0

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._seq = self.first_seq
        # parts this shard was writing when a run of it was killed (other shards may be writing)
        for stale in [*self.out_dir.glob(f".tmp-part-{self.shard.tag}-*"),
                      *self.out_dir.glob(f"_tmp-part-*-{self.shard.tag}-*")]:
            stale.unlink(missing_ok=True)

    def write(self, row: dict) -> str:
        """Buffer `row`; returns the status it is stored with ("error" if it could not be stored)."""
        # converted (and so checked) one row at a time: a row Arrow cannot hold becomes an error
        # row here, and never makes the flush fail for the rows buffered with it
        stored = storable_row(row)
        self._rows.append(stored)
        if len(self._rows) >= self.flush_rows or time.monotonic() - self._last_flush > self.flush_seconds:
            self.flush()
        return stored.column("status")[0].as_py()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._rows:
            return
        table = pa.concat_tables(self._rows)
        meta = {b"unipixel": json.dumps({**self.metadata, "seq": self._seq}, default=str).encode()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
        name = part_name(self._seq, self.shard.tag)
        tmp = self.out_dir / f"_tmp-{name}.inprogress"
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.out_dir / name)
        self._parts += 1
        self._seq += 1
        self._rows = []

    def close(self) -> None:
        self.flush()


def safe_text(value: object) -> str:
    """Text any Arrow string column can hold: lone surrogates become `\\udXXX` escapes."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def storable_row(row: dict) -> pa.Table:
    """`row` as a one-row table in SCHEMA; a row that does not fit (wrong type, text that is not
    UTF-8) becomes an error row that keeps its id, line and the reason."""
    try:
        return pa.Table.from_pylist([_normalise(row)], schema=SCHEMA)
    except (pa.ArrowException, TypeError, ValueError, OverflowError, UnicodeError) as e:
        line = row.get("line")
        line = line if isinstance(line, int) and not isinstance(line, bool) and 0 <= line < 2**31 else None
        where = f"line {line}: " if line is not None else ""
        fingerprint = row.get("fingerprint") if isinstance(row.get("fingerprint"), str) else None
        fallback = {"id": safe_text(row.get("id")), "task": safe_text(row.get("task")), "line": line,
                    "fingerprint": fingerprint and safe_text(fingerprint), "status": "error",
                    "error": f"{where}result could not be stored ({type(e).__name__}: {safe_text(e)})"}
        return pa.Table.from_pylist([_normalise(fallback)], schema=SCHEMA)


def _normalise(row: dict) -> dict:
    out = {name: row.get(name) for name in SCHEMA.names}
    out["objects"] = out["objects"] or []
    out["frame_indices"] = out["frame_indices"] or []
    return out


def read_results(out_dir: str | Path, decode_masks: bool = False):
    """The results dataset as a pandas DataFrame, one current row per id (the row of the newest
    part, see `dataset`); with `decode_masks`, adds a `mask_arrays` column holding, per row, a
    list of bool arrays `[T, H, W]` (one per object). Unreadable parts and files the tool did not
    write are skipped."""
    from .dataset import current, read_parts, scan

    found = scan(Path(out_dir), strict=False)  # a reader shows what is there; runs refuse foreign files
    for bad in found.corrupt:
        log.warning("%s: not a readable Parquet file; skipped (the next run quarantines it)", bad)
    df = current(read_parts(found.parts, SCHEMA)).to_pandas()
    if decode_masks:
        df["mask_arrays"] = [
            [np.stack([rle_decode(m) for m in obj["masks"]]) if len(obj["masks"]) else np.zeros((0, 0, 0), bool)
             for obj in objs]
            for objs in df["objects"]
        ]
    return df


def run_metadata(out_dir: str | Path) -> dict:
    """Run metadata of the newest part."""
    from .dataset import own_parts

    parts = own_parts(Path(out_dir))
    if not parts:
        return {}
    meta = dict(parts[-1].metadata)
    meta.pop("seq", None)
    return meta
