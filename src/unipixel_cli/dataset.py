"""The results folder as the tool owns it: which files are its parts, in which order they were
written, which row of an id is current, what to do with corrupt parts, and compaction.

Layout of `OUT/` (everything Arrow, pandas, polars and duckdb read as is):
* `part-<seq>-<shard>-<uuid>.parquet`: result rows, with run metadata under the `unipixel`
  key. `seq` (8 digits) is larger than the `seq` of every part present when the writing run
  took its lock, so "newer part" is well defined without clocks: for each id the row in the
  part with the highest `(seq, name)` is the current one. Parts of older versions
  (`part-<shard>-<timestamp>-<uuid>.parquet`, no `seq`) order before all of these, by name.
* `_lock-<shard>.parquet`, `_lock-dataset.parquet`: `fcntl.flock` targets. They are valid
  Parquet files with the results schema and no rows, because polars and duckdb read every
  file of a folder (they do not skip `_` or `.` names) and pyarrow/pandas skip `_` names.
* `_tmp-*`: a part being written (renamed to `part-*` when complete).
Corrupt parts of our own move to the sibling folder `<OUT>.quarantine/` (not inside `OUT`,
where polars and duckdb would try to read them). Anything else in `OUT` is foreign.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

PART_RE = re.compile(r"^part-(?P<seq>\d{8})-(?P<shard>shard\d{3}of\d{3})-[0-9a-f]{8}\.parquet$")
LEGACY_PART_RE = re.compile(r"^part-(?P<shard>shard\d{3}of\d{3})-\d{8}T\d{6}-[0-9a-f]{8}\.parquet$")
LOCK_RE = re.compile(r"^_lock-[a-z0-9]+\.parquet$")
META_KEY = b"unipixel"


class ForeignFile(Exception):
    """A file in the output folder that the tool did not write; nothing is touched."""


@dataclass(frozen=True)
class Part:
    path: Path
    seq: int  # -1 for parts of versions without sequence numbers
    shard: str
    metadata: dict

    @property
    def order(self) -> tuple[int, str]:
        return self.seq, self.path.name

    @property
    def settings(self) -> dict | None:
        return self.metadata.get("settings")


def part_name(seq: int, shard_tag: str) -> str:
    return f"part-{seq:08d}-{shard_tag}-{uuid.uuid4().hex[:8]}.parquet"


def quarantine_dir(out_dir: Path) -> Path:
    return out_dir.parent / f"{out_dir.name}.quarantine"


def _is_bookkeeping(name: str) -> bool:
    # `.lock-*` / `.tmp-part-*`: what versions before 0.2 left behind
    return bool(LOCK_RE.match(name)) or name.startswith(("_tmp-", ".lock-shard", ".tmp-part-"))


def _own_name(name: str) -> re.Match | None:
    return PART_RE.match(name) or LEGACY_PART_RE.match(name)


def _read_part(path: Path, m: re.Match) -> Part | None:
    """The part's footer and metadata; None when the file is not readable Parquet."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return None
    if META_KEY not in meta:
        raise ForeignFile(f"{path}: named like a unipixel part but not written by unipixel "
                          "(no run metadata); move it away or choose another -o")
    seq = int(m.group("seq")) if "seq" in m.groupdict() else -1
    return Part(path, seq, m.group("shard"), json.loads(meta[META_KEY]))


@dataclass
class Scan:
    parts: list[Part]
    corrupt: list[Path]


def scan(out_dir: Path, strict: bool = True) -> Scan:
    """Classify every entry of `out_dir`; raises `ForeignFile` for the first foreign one
    (`strict=False`: foreign entries are left out, for readers)."""
    parts, corrupt = [], []
    if not out_dir.is_dir():
        return Scan(parts, corrupt)
    for entry in sorted(out_dir.iterdir()):
        if _is_bookkeeping(entry.name) and entry.is_file():
            continue
        m = _own_name(entry.name)
        if (m is None or not entry.is_file()) and not strict:
            continue
        if m is None or not entry.is_file():
            raise ForeignFile(f"{entry}: not a file unipixel wrote; the output folder holds only its "
                              "results (move it away or choose another -o)")
        try:
            part = _read_part(entry, m)
        except ForeignFile:
            if strict:
                raise
            continue
        if part is None:
            corrupt.append(entry)
        else:
            parts.append(part)
    parts.sort(key=lambda p: p.order)
    return Scan(parts, corrupt)


def own_parts(out_dir: Path) -> list[Part]:
    """Readable parts of `out_dir` in write order (corrupt and foreign files are left out)."""
    return scan(out_dir, strict=False).parts


def quarantine(paths: list[Path], out_dir: Path) -> Path:
    """Move corrupt parts out of the dataset; their rows are then simply missing (and rerun)."""
    dest = quarantine_dir(out_dir)
    dest.mkdir(parents=True, exist_ok=True)
    for p in paths:
        shutil.move(str(p), dest / p.name)
    return dest


def next_seq(parts: list[Part]) -> int:
    return max((p.seq for p in parts), default=0) + 1


def read_parts(parts: list[Part], schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """Rows of `parts` (missing columns as nulls), with `_order`: the part's rank in write order."""
    tables = []
    for rank, part in enumerate(parts):
        t = ds.dataset(str(part.path), format="parquet", schema=schema).to_table(columns=columns)
        tables.append(t.append_column("_order", pa.array([rank] * t.num_rows, pa.int64())))
    if not tables:
        fields = [schema.field(c) for c in columns] if columns else list(schema)
        return pa.schema([*fields, ("_order", pa.int64())]).empty_table()
    return pa.concat_tables(tables)


def current(table: pa.Table, keep_order: bool = False) -> pa.Table:
    """One row per id: the one from the newest part (largest `_order`), kept in write order."""
    keys = table.select(["id", "_order"]).to_pandas()
    keys["_row"] = range(len(keys))
    newest = keys.sort_values(["_order", "_row"], kind="stable").drop_duplicates("id", keep="last")
    table = table.take(pa.array(sorted(newest["_row"]), pa.int64()))
    return table if keep_order else table.drop_columns(["_order"])


def create_lock_file(path: Path, schema: pa.Schema) -> None:
    """An empty results table (readers that open every file of the folder see zero rows),
    linked into place only if no lock file exists: a concurrent creator never replaces the
    file another run already locked."""
    tmp = path.with_name(f"_tmp-{uuid.uuid4().hex[:8]}.inprogress")
    pq.write_table(schema.empty_table(), tmp)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
