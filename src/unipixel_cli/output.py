"""Results as a Parquet dataset: COCO RLE masks, atomic part files, resume, shards, lock."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

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


class OutputLock:
    """`fcntl.flock` on OUT_DIR/.lock-<shard>; the kernel releases it if the process dies."""

    def __init__(self, out_dir: Path, shard: Shard) -> None:
        self.path = out_dir / f".lock-{shard.tag}"
        self.fd: int | None = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(self.fd)
            raise LockHeld(f"another run holds the lock on {self.path.parent} ({self.path.name})") from e
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def part_files(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.glob("part-*.parquet")) if out_dir.exists() else []


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
    _rows: list[dict] = field(default_factory=list)
    _last_flush: float = field(default_factory=time.monotonic)
    _parts: int = 0

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.out_dir.glob(".tmp-part-*"):
            stale.unlink(missing_ok=True)

    def write(self, row: dict) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.flush_rows or time.monotonic() - self._last_flush > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._rows:
            return
        table = pa.Table.from_pylist([_normalise(r) for r in self._rows], schema=SCHEMA)
        meta = {b"unipixel": json.dumps(self.metadata, default=str).encode()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
        name = f"part-{self.shard.tag}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.out_dir / f".tmp-{name}"
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.out_dir / name)
        self._parts += 1
        self._rows = []

    def close(self) -> None:
        self.flush()


def _normalise(row: dict) -> dict:
    out = {name: row.get(name) for name in SCHEMA.names}
    out["objects"] = out["objects"] or []
    out["frame_indices"] = out["frame_indices"] or []
    return out


def read_results(out_dir: str | Path, decode_masks: bool = False):
    """The results dataset as a pandas DataFrame; with `decode_masks`, adds a `mask_arrays`
    column holding, per row, a list of bool arrays `[T, H, W]` (one per object)."""
    files = part_files(Path(out_dir))
    if not files:
        return pa.Table.from_pylist([], schema=SCHEMA).to_pandas()
    df = ds.dataset([str(f) for f in files], format="parquet", schema=SCHEMA).to_table().to_pandas()
    if decode_masks:
        df["mask_arrays"] = [
            [np.stack([rle_decode(m) for m in obj["masks"]]) if len(obj["masks"]) else np.zeros((0, 0, 0), bool)
             for obj in objs]
            for objs in df["objects"]
        ]
    return df


def run_metadata(out_dir: str | Path) -> dict:
    files = part_files(Path(out_dir))
    if not files:
        return {}
    meta = pq.read_schema(files[-1]).metadata or {}
    return json.loads(meta.get(b"unipixel", b"{}"))
