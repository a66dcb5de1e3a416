"""Row checks that need the media (run by `unipixel validate` and before PixelQA inference)."""

from __future__ import annotations

from .manifest import ManifestRow, PixelQARow
from .media import Media, MediaError, open_media


def pixelqa_problems(row: PixelQARow, media: Media) -> list[str]:
    problems = []
    for obj in row.objects:
        where = f"object {obj.id}"
        if obj.frame >= media.num_frames:
            problems.append(f"{where}: frame {obj.frame} out of range (media has {media.num_frames} frames)")
        if obj.point is not None:
            x, y = obj.point
            if not (0 <= x < media.width and 0 <= y < media.height):
                problems.append(f"{where}: point {list(obj.point)} outside the {media.width}x{media.height} frame")
        if obj.box is not None:
            x0, y0, x1, y1 = obj.box
            if x0 < 0 or y0 < 0 or x1 > media.width or y1 > media.height:
                problems.append(f"{where}: box {list(obj.box)} outside the {media.width}x{media.height} frame")
        if obj.mask is not None:
            size = list(obj.mask.get("size", []))
            if size != [media.height, media.width]:
                problems.append(f"{where}: mask size {size} differs from the media's [{media.height}, {media.width}]")
            else:
                from .output import rle_decode
                try:
                    if not rle_decode(obj.mask).any():
                        problems.append(f"{where}: mask is empty")
                except Exception as e:
                    problems.append(f"{where}: mask RLE does not decode ({e})")
    return problems


def row_problems(mrow: ManifestRow) -> list[str]:
    try:
        media = open_media(mrow.media_path, getattr(mrow.row, "frame_files", None))
        media.read([0, media.num_frames - 1])
    except MediaError as e:
        return [str(e)]
    problems = []
    row = mrow.row
    if row.start is not None and row.start >= media.num_frames:
        problems.append(f"start {row.start} is past the last frame ({media.num_frames - 1})")
    if isinstance(row, PixelQARow):
        problems += pixelqa_problems(row, media)
    return problems


def check_rows(rows: list[ManifestRow]) -> list[tuple[int, str, str]]:
    return [(r.line, r.id, f"line {r.line}: {p}") for r in rows for p in row_problems(r)]
