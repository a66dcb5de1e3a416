"""JSONL manifests (SPEC §4): one request per line, validated with pydantic.

Validation is strict and total: every field has one JSON type (no `true` read as 1, no number
read as text), numbers are finite, ids are strings or integers, text is valid UTF-8 (JSON
`\\ud800` escapes decode to lone surrogates that no file or Parquet column can hold). Any value
of any type in any field gives a `RowError` naming the line and the problem, never an exception.

Relative media paths resolve against the manifest's folder; ids default to the line number.
Keys the manifest format does not know are the user's own columns: they are kept and passed
through to the output's `extra` column as a JSON object (warned about once per manifest).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

log = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1
MAX_SHOWN = 60  # characters of an offending value quoted in an error message


def _valid_utf8(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid UTF-8 text (lone surrogate {text[e.start]!r} at character {e.start})") from e
    return text


def _valid_path(text: str) -> str:
    if "\x00" in text:
        raise ValueError("a path cannot contain a NUL character")
    return text


# one JSON type per field: pydantic's strict mode refuses bool→int, number→str and the like
AnyText = Annotated[str, Strict(), AfterValidator(_valid_utf8)]
Text = Annotated[AnyText, Field(min_length=1)]
PathText = Annotated[str, Strict(), Field(min_length=1), AfterValidator(_valid_utf8), AfterValidator(_valid_path)]
Coordinate = Annotated[float, Strict(), AllowInfNan(False)]  # JSON integers are fine, NaN/inf are not
Count = Annotated[int, Strict()]


def _valid_id(value: object) -> str:
    # one message for every wrong type (a pydantic union would list one error per member)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string or an integer")
    return _valid_utf8(value)


Id = Annotated[str, BeforeValidator(_valid_id)]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Id | None = None
    video: PathText | None = None
    frames: PathText | None = None
    image: PathText | None = None
    # explicit frame files inside the `frames` folder, in video order (benchmarks name them from
    # their meta files so a stray file in the folder cannot shift the frames)
    frame_files: Annotated[list[PathText], Field(min_length=1)] | None = None
    sample_frames: Annotated[Count, Field(ge=1, le=512)] | None = None
    # benchmarks that sample frames their own way (MVBench by fps, VideoRefer over annotated
    # frames) name the source frames the LLM sees, and their pixel budget / frame rate
    frame_indices: Annotated[list[Annotated[Count, Field(ge=0, le=INT32_MAX)]], Field(min_length=1)] | None = None
    min_pixels: Annotated[Count, Field(ge=28 * 28, le=INT32_MAX)] | None = None
    max_pixels: Annotated[Count, Field(ge=28 * 28, le=INT32_MAX)] | None = None
    sample_fps: Annotated[Coordinate, Field(gt=0)] | None = None
    answer_prefix: AnyText | None = None  # the assistant's reply starts with this text
    max_new_tokens: Annotated[Count, Field(ge=1, le=8192)] | None = None
    start: Annotated[Count, Field(ge=0, le=INT32_MAX)] | None = None
    end: Annotated[Count, Field(ge=1, le=INT32_MAX)] | None = None

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
        given = [k for k in ("video", "frames", "image") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("exactly one of 'video', 'frames' or 'image' is required"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.frame_indices is not None and (min(self.frame_indices) < 0
                                               or len(set(self.frame_indices)) != len(self.frame_indices)):
            raise ValueError("'frame_indices' must be distinct source-frame indices >= 0")
        if self.frame_files is not None and not self.frames:
            raise ValueError("'frame_files' needs a 'frames' folder")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"'end' ({self.end}) must be greater than 'start' ({self.start})")
        return self

    @property
    def media(self) -> str:
        return self.video or self.frames or self.image  # type: ignore[return-value]


class SegmentRow(_Row):
    prompt: Text
    propagate: Literal["sampled", "all"] | None = None  # a literal matches exact strings only


class RleMask(BaseModel):
    """A COCO compressed RLE (`counts` as a string); the validator decodes it against the media."""

    model_config = ConfigDict(extra="forbid")

    size: tuple[Annotated[Count, Field(ge=1, le=INT32_MAX)], Annotated[Count, Field(ge=1, le=INT32_MAX)]]
    counts: Text

    @model_validator(mode="before")
    @classmethod
    def _is_rle(cls, value: object) -> object:
        if not isinstance(value, dict) or not {"size", "counts"} <= set(value):
            raise ValueError("mask must be a COCO RLE with 'size' and 'counts'")
        return value


class ObjectPrompt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # object ids and frames end up in int32 output columns
    id: Annotated[Count, Field(ge=0, le=INT32_MAX)]
    frame: Annotated[Count, Field(ge=0, le=INT32_MAX)] = 0
    point: tuple[Coordinate, Coordinate] | None = None
    box: tuple[Coordinate, Coordinate, Coordinate, Coordinate] | None = None
    mask: RleMask | None = None

    @model_validator(mode="after")
    def _one_prompt(self):
        given = [k for k in ("point", "box", "mask") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"object {self.id}: exactly one of 'point', 'box' or 'mask' is required")
        if self.box is not None and (self.box[2] <= self.box[0] or self.box[3] <= self.box[1]):
            raise ValueError(f"object {self.id}: degenerate box {list(self.box)} (need x1 > x0 and y1 > y0)")
        return self

    @property
    def source(self) -> str:
        return "point" if self.point is not None else "box" if self.box is not None else "mask"

    @property
    def rle(self) -> dict | None:
        return None if self.mask is None else {"size": list(self.mask.size), "counts": self.mask.counts}


class PixelQARow(_Row):
    question: Text
    objects: list[ObjectPrompt] = Field(min_length=1)
    options: list[Text] | None = None

    @model_validator(mode="after")
    def _objects_match_question(self):
        ids = [o.id for o in self.objects]
        # an id may repeat only as a mask track: masks of one object on different frames
        entries = [(o.id, o.frame if o.mask is not None else None) for o in self.objects]
        tracks = {o.id for o in self.objects if o.mask is None or ids.count(o.id) == 1}
        if len(set(entries)) != len(entries) or any(ids.count(i) > 1 for i in tracks):
            raise ValueError(f"object ids repeat: {ids} (only masks of one object on different frames may)")
        text = self.question + " ".join(self.options or [])
        for i in ids:
            if f"[{i}]" not in text:
                raise ValueError(f"object {i} is defined but the question never mentions [{i}]")
        for ref in sorted({int(m) for m in re.findall(r"\[(\d+)\]", text)}):
            if ref not in ids:
                raise ValueError(f"the question mentions [{ref}] but no object has id {ref}")
        return self


Task = Literal["segment", "pixelqa"]
ROW_MODELS = {"segment": SegmentRow, "pixelqa": PixelQARow}
PIXELQA_KEYS = ("question", "objects", "options")


@dataclass
class ManifestRow:
    line: int
    id: str
    row: SegmentRow | PixelQARow
    media_path: Path
    extra: str | None = None  # the row's unknown keys as a JSON object, passed through to the output


@dataclass
class RowError:
    """A line that failed validation. Every field fits the output schema: `media` and `prompt`
    are the given values only when they are valid text; the offending value is quoted in
    `message`, escaped."""

    line: int
    id: str
    message: str
    media: str | None = None
    prompt: str | None = None
    extra: str | None = None


class ManifestError(Exception):
    """The manifest as a whole cannot be used (missing file, duplicate ids); nothing runs."""


def shown(value: object) -> str:
    """A value quoted for an error message: `repr` escapes lone surrogates and control
    characters, and long values are cut."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 1] + "…"


def _format_validation(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "string_unicode":
            msg = "not valid UTF-8 text (holds a lone surrogate such as \\ud800)"
        if err["type"] not in ("missing", "value_error") and "input" in err and not isinstance(err["input"], dict):
            msg += f", got {shown(err['input'])}"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _as_text(value: object) -> str | None:
    """`value` if it can be stored as text in the output, else None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return _valid_utf8(value)
    except ValueError:
        return None


def _row_id(data: dict, line: int) -> str | None:
    """The row's id as stored (str), or None when the given id is not a valid one."""
    value = data.get("id")
    if value is None:
        return str(line)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _as_text(value)


def _finite(value: object) -> object:
    """JSON has no NaN/Infinity: they become strings so `extra` stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def extra_json(unknown: dict) -> str:
    """Unknown keys as a JSON object; non-ASCII text kept readable unless it is not valid
    UTF-8 (lone surrogates), which is then written as JSON `\\u` escapes."""
    value = _finite(unknown)
    try:
        text = json.dumps(value, ensure_ascii=False)
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True)


def detect_task(path: str | Path) -> Task:
    """`pixelqa` when the manifest's rows carry `question`/`objects` and none a `prompt`."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    seen_pixelqa = seen_segment = 0
    for _, text, _problem in _read_lines(path):
        if text is None:
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            seen_pixelqa += any(k in data for k in PIXELQA_KEYS)
            seen_segment += "prompt" in data
    if seen_pixelqa and seen_segment:
        raise ManifestError(f"{path}: rows mix segment ('prompt', {seen_segment} rows) and pixelqa "
                            f"('question'/'objects', {seen_pixelqa} rows) requests; pass --task")
    return "pixelqa" if seen_pixelqa else "segment"


def _read_lines(path: Path) -> list[tuple[int, str | None, str | None]]:
    """`(line number, text, problem)` per line. Lines split on `\\n` only (JSON strings may hold
    U+2028 and other characters `str.splitlines` would split on); a line that is not UTF-8 is
    that line's problem, not the manifest's."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ManifestError(f"{path}: cannot read ({e.strerror or e})") from e
    out = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.removesuffix(b"\r")
        if n == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
        try:
            out.append((n, raw.decode("utf-8"), None))
        except UnicodeDecodeError as e:
            out.append((n, None, f"not valid UTF-8 ({e.reason} at byte {e.start + 1} of the line)"))
    return out


def load_manifest(path: str | Path, task: Task) -> tuple[list[ManifestRow], list[RowError]]:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    base = path.resolve().parent
    rows: list[ManifestRow] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    model = ROW_MODELS[task]
    unknown_keys: dict[str, int] = {}
    for n, text, problem in _read_lines(path):
        if problem is not None:
            errors.append(RowError(n, f"line{n}", f"line {n}: {problem}"))
            continue
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            errors.append(RowError(n, f"line{n}", f"line {n}: invalid JSON ({e.msg} at column {e.colno})"))
            continue
        except RecursionError:
            errors.append(RowError(n, f"line{n}", f"line {n}: invalid JSON (nested too deeply)"))
            continue
        if not isinstance(data, dict):
            errors.append(RowError(n, f"line{n}", f"line {n}: expected a JSON object, got {type(data).__name__}"))
            continue
        unknown = {k: v for k, v in data.items() if k not in model.model_fields}
        known = {k: v for k, v in data.items() if k in model.model_fields}
        for k in unknown:
            unknown_keys.setdefault(k, n)
        extra = extra_json(unknown) if unknown else None
        row_id = _row_id(data, n)
        key = row_id if row_id is not None else f"line{n}"
        if key in seen:
            raise ManifestError(f"{path}: id {shown(key)} on line {n} already used on line {seen[key]}")
        seen[key] = n
        try:
            row = model.model_validate(known)
        except ValidationError as e:
            media = next((known[k] for k in ("video", "frames", "image") if k in known), None)
            prompt = known.get("prompt", known.get("question"))
            errors.append(RowError(n, key, f"line {n}: {_format_validation(e)}",
                                   media=_as_text(media), prompt=_as_text(prompt), extra=extra))
            continue
        media_path = Path(row.media)
        media_path = media_path if media_path.is_absolute() else base / media_path
        rows.append(ManifestRow(n, key, row, media_path, extra))
    if unknown_keys:
        names = ", ".join(f"{shown(k)} (first on line {n})" for k, n in list(unknown_keys.items())[:10])
        log.warning("%s: keys the %s manifest format does not use are passed through in the `extra` column: %s",
                    path, task, names)
    return rows, errors
