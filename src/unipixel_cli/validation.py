"""Row checks that need the media. `segment`/`pixelqa` (in `Engine.prepare`) and `unipixel
validate` run exactly these, so a manifest that validates clean does not fail them at run time
for a reason validate could have seen."""

from __future__ import annotations

from .manifest import ManifestRow, PixelQARow, SegmentRow
from .media import Media, MediaError, open_media
from .model.preprocess import force_prompt_frames, uniform_indices

DEFAULT_SAMPLE_FRAMES = 16


def frame_range(row: SegmentRow | PixelQARow, media: Media) -> tuple[int, int]:
    """`[start, end)` in source frames (the media's whole length when not given)."""
    return row.start or 0, row.end or media.num_frames


def range_problems(row: SegmentRow | PixelQARow, media: Media) -> list[str]:
    n = media.num_frames
    if row.start is not None and row.start >= n:
        return [f"start {row.start} is past the last frame ({n - 1})"]
    # an `end` past the clip is an error, not clamped: a range the clip does not have usually
    # means the wrong file or a frame-rate mix-up, which a silent clamp would hide
    if row.end is not None and row.end > n:
        return [f"end {row.end} is past the end of the media ({n} frames; end is exclusive, at most {n})"]
    past = [i for i in row.frame_indices or [] if i >= n]
    if past:
        return [f"frame_indices: frame {past[0]} is past the last frame ({n - 1})"]
    return []


def pixelqa_problems(row: PixelQARow, media: Media) -> list[str]:
    problems = []
    start, end = frame_range(row, media)
    for obj in row.objects:
        where = f"object {obj.id}"
        if obj.frame >= media.num_frames:
            problems.append(f"{where}: frame {obj.frame} out of range (media has {media.num_frames} frames)")
        elif not start <= obj.frame < end:
            problems.append(f"{where}: frame {obj.frame} is outside start/end [{start}, {end})")
        if obj.point is not None:
            x, y = obj.point
            if not (0 <= x < media.width and 0 <= y < media.height):
                problems.append(f"{where}: point {list(obj.point)} outside the {media.width}x{media.height} frame")
        if obj.box is not None:
            x0, y0, x1, y1 = obj.box
            if x0 < 0 or y0 < 0 or x1 > media.width or y1 > media.height:
                problems.append(f"{where}: box {list(obj.box)} outside the {media.width}x{media.height} frame")
        if obj.mask is not None:
            size = list(obj.mask.size)
            if size != [media.height, media.width]:
                problems.append(f"{where}: mask size {size} differs from the media's [{media.height}, {media.width}]")
            else:
                from .output import rle_decode
                try:
                    if not rle_decode(obj.rle).any():
                        problems.append(f"{where}: mask is empty")
                except Exception as e:  # pycocotools raises plain ValueError/TypeError on bad counts
                    problems.append(f"{where}: mask RLE does not decode ({e})")
    return problems


def media_problems(row: SegmentRow | PixelQARow, media: Media) -> list[str]:
    """Everything wrong with a row given its opened media (empty when the row can run)."""
    problems = range_problems(row, media)
    if isinstance(row, PixelQARow):
        problems += pixelqa_problems(row, media)
    return problems


def check_row(row: SegmentRow | PixelQARow, media: Media) -> None:
    problems = media_problems(row, media)
    if problems:
        raise ValueError("; ".join(problems))


def llm_frames(row: SegmentRow | PixelQARow, media: Media, sample_frames: int) -> list[int]:
    """Source frames the LLM sees: the row's `frame_indices`, else uniform over `[start, end)`;
    PixelQA prompt frames replace the nearest sampled ones."""
    start, end = frame_range(row, media)
    sample = row.sample_frames or sample_frames
    idx = list(row.frame_indices or [start + i for i in uniform_indices(end - start, sample)])
    if isinstance(row, PixelQARow):
        idx = force_prompt_frames(idx, sorted({o.frame for o in row.objects}))
    return idx


def row_problems(mrow: ManifestRow, sample_frames: int = DEFAULT_SAMPLE_FRAMES) -> list[str]:
    """What `segment`/`pixelqa` would reject this row for: media that does not open (frame
    sizes of a folder included), the checks above, and frames that do not decode (the sampled
    ones and the last)."""
    try:
        media = open_media(mrow.media_path, getattr(mrow.row, "frame_files", None))
        problems = media_problems(mrow.row, media)
        if not problems:
            media.read(sorted({*llm_frames(mrow.row, media, sample_frames), media.num_frames - 1}))
    except MediaError as e:
        return [str(e)]
    return problems


def check_rows(rows: list[ManifestRow]) -> list[tuple[int, str, str]]:
    return [(r.line, r.id, f"line {r.line}: {p}") for r in rows for p in row_problems(r)]
