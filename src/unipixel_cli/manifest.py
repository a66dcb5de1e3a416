"""JSONL manifests (SPEC §4): one request per line, validated with pydantic.

Relative media paths resolve against the manifest's folder; ids default to the line
number; every problem carries the line number and the field. A bad line never stops the
others: it becomes a `RowError` the engine writes as an error row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    video: str | None = None
    frames: str | None = None
    image: str | None = None
    # explicit frame files inside the `frames` folder, in video order (benchmarks name them from
    # their meta files so a stray file in the folder cannot shift the frames)
    frame_files: list[str] | None = Field(default=None, min_length=1)
    sample_frames: int | None = Field(default=None, ge=1, le=512)
    max_new_tokens: int | None = Field(default=None, ge=1, le=8192)
    start: int | None = Field(default=None, ge=0)
    end: int | None = Field(default=None, ge=1)

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_str(cls, v):
        return None if v is None else str(v)

    @field_validator("frame_files")
    @classmethod
    def _plain_file_names(cls, v):
        if v is None:
            return v
        for name in v:
            if not name or name in (".", "..") or "/" in name or "\\" in name:
                raise ValueError(f"{name!r} is not a file name inside the 'frames' folder")
        if len(set(v)) != len(v):
            raise ValueError("file names repeat")
        return v

    @model_validator(mode="after")
    def _one_media(self):
        given = [k for k in ("video", "frames", "image") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("exactly one of 'video', 'frames' or 'image' is required"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.frame_files is not None and not self.frames:
            raise ValueError("'frame_files' needs a 'frames' folder")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"'end' ({self.end}) must be greater than 'start' ({self.start})")
        return self

    @property
    def media(self) -> str:
        return self.video or self.frames or self.image  # type: ignore[return-value]


class SegmentRow(_Row):
    prompt: str = Field(min_length=1)
    propagate: Literal["sampled", "all"] | None = None


class ObjectPrompt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int = Field(ge=0)
    frame: int = Field(default=0, ge=0)
    point: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None
    mask: dict | None = None

    @model_validator(mode="after")
    def _one_prompt(self):
        given = [k for k in ("point", "box", "mask") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"object {self.id}: exactly one of 'point', 'box' or 'mask' is required")
        if self.box is not None and (self.box[2] <= self.box[0] or self.box[3] <= self.box[1]):
            raise ValueError(f"object {self.id}: degenerate box {list(self.box)} (need x1 > x0 and y1 > y0)")
        if self.mask is not None and not {"size", "counts"} <= set(self.mask):
            raise ValueError(f"object {self.id}: mask must be a COCO RLE with 'size' and 'counts'")
        return self

    @property
    def source(self) -> str:
        return "point" if self.point is not None else "box" if self.box is not None else "mask"


class PixelQARow(_Row):
    question: str = Field(min_length=1)
    objects: list[ObjectPrompt] = Field(min_length=1)
    options: list[str] | None = None

    @model_validator(mode="after")
    def _objects_match_question(self):
        ids = [o.id for o in self.objects]
        if len(set(ids)) != len(ids):
            raise ValueError(f"object ids repeat: {ids}")
        text = self.question + " ".join(self.options or [])
        for i in ids:
            if f"[{i}]" not in text:
                raise ValueError(f"object {i} is defined but the question never mentions [{i}]")
        import re

        for ref in sorted({int(m) for m in re.findall(r"\[(\d+)\]", text)}):
            if ref not in ids:
                raise ValueError(f"the question mentions [{ref}] but no object has id {ref}")
        return self


Task = Literal["segment", "pixelqa"]
ROW_MODELS = {"segment": SegmentRow, "pixelqa": PixelQARow}


@dataclass
class ManifestRow:
    line: int
    id: str
    row: SegmentRow | PixelQARow
    media_path: Path


@dataclass
class RowError:
    line: int
    id: str
    message: str
    media: str | None = None
    prompt: str | None = None


class ManifestError(Exception):
    """The manifest as a whole cannot be used (missing file, duplicate ids); nothing runs."""


def _format_validation(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def load_manifest(path: str | Path, task: Task) -> tuple[list[ManifestRow], list[RowError]]:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    base = path.resolve().parent
    rows: list[ManifestRow] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    model = ROW_MODELS[task]
    for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            errors.append(RowError(n, f"line{n}", f"line {n}: invalid JSON ({e.msg} at column {e.colno})"))
            continue
        if not isinstance(data, dict):
            errors.append(RowError(n, f"line{n}", f"line {n}: expected a JSON object"))
            continue
        row_id = str(data["id"]) if data.get("id") is not None else str(n)
        if row_id in seen:
            raise ManifestError(f"{path}: id {row_id!r} on line {n} already used on line {seen[row_id]}")
        seen[row_id] = n
        try:
            row = model.model_validate(data)
        except ValidationError as e:
            media = data.get("video") or data.get("frames") or data.get("image")
            errors.append(RowError(n, row_id, f"line {n}: {_format_validation(e)}",
                                   media=media, prompt=data.get("prompt") or data.get("question")))
            continue
        media_path = Path(row.media)
        media_path = media_path if media_path.is_absolute() else base / media_path
        rows.append(ManifestRow(n, row_id, row, media_path))
    return rows, errors
