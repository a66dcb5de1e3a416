"""Decode videos (decord, PyAV fallback), numbered frame folders and images to uint8 RGB frames.

Every failure — missing, empty, corrupt or unsupported media — raises `MediaError` with a
message that says which file and what is wrong. Frames are read by index so callers can
pull only the sampled frames, or stream `propagate all` in bounded chunks.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

VIDEO_EXTS = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".gif"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class MediaError(Exception):
    """A media file cannot be used; the message names the file and the problem."""


def natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def to_rgb(img: Image.Image, for_llm: bool = False) -> np.ndarray:
    """RGB pixels of an image as the authors' two loaders see it: SAM 2's drops any alpha
    channel (transparent pixels keep their colour); Qwen's pastes an RGBA image over white."""
    if for_llm and img.mode == "RGBA":
        canvas = Image.new("RGB", img.size, (255, 255, 255))
        canvas.paste(img, mask=img.getchannel("A"))
        return np.asarray(canvas)
    return np.asarray(img.convert("RGB"))


EXIF_ORIENTATION = 0x0112
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def to_8bit(img: Image.Image) -> Image.Image:
    """An image in a mode `to_rgb` converts faithfully. Pillow's own conversion clips 16-bit
    values to 255 (a 16-bit PNG turns white): integer images are scaled from their 16-bit range,
    float images from [0, 1]; Lab goes through a colour transform; premultiplied luminance is undone."""
    if img.mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I (16-bit PNGs open as I;16 or I)
        values = np.asarray(img).astype(np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(img) * 255.0), 0, 255).astype(np.uint8), "L")
    if img.mode == "LAB":
        lab_to_srgb = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                              "LAB", "RGB")
        return ImageCms.applyTransform(img, lab_to_srgb)
    if img.mode == "La":
        lum, alpha = (np.asarray(c).astype(np.float64) for c in img.split())
        lum = np.where(alpha > 0, lum * 255.0 / np.maximum(alpha, 1), 0)
        return Image.merge("LA", [Image.fromarray(np.clip(np.rint(lum), 0, 255).astype(np.uint8), "L"),
                                  img.getchannel("a").convert("L")])
    return img


def displayed(img: Image.Image) -> Image.Image:
    """The image as viewers show it: EXIF orientation applied, 8 bits per channel."""
    return to_8bit(ImageOps.exif_transpose(img))


def _read_image(path: Path, for_llm: bool = False) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return to_rgb(displayed(img), for_llm)
    except FileNotFoundError as e:
        raise MediaError(f"{path}: file not found") from e
    except IMAGE_ERRORS as e:
        raise MediaError(f"{path}: cannot decode image ({e})") from e


def _has_alpha(path: Path) -> bool:
    """Whether the LLM's view of an image differs from SAM 2's (header only, no decode)."""
    try:
        with Image.open(path) as img:
            return img.mode == "RGBA"
    except IMAGE_ERRORS:
        return False  # the decode reports it


def _header(path: Path) -> tuple[int, int, bool]:
    """`(width, height, has_alpha)` as displayed, from the file's header (no pixel decode)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            swapped = img.getexif().get(EXIF_ORIENTATION, 1) in TRANSPOSED_ORIENTATIONS
            alpha = img.mode == "RGBA"
    except FileNotFoundError as e:
        raise MediaError(f"{path}: file not found") from e
    except IMAGE_ERRORS as e:
        raise MediaError(f"{path}: cannot decode image ({e})") from e
    return (h, w, alpha) if swapped else (w, h, alpha)


def folder_frames(folder: Path) -> list[Path]:
    """A frame folder's images in natural order; hidden files (macOS `._*` AppleDouble
    files, `.DS_Store`) are not frames."""
    return sorted((p for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".") and p.is_file()),
                  key=lambda p: natural_key(p.name))


@dataclass
class Media:
    """An opened video, frame folder or image: size and frame count known, frames on demand."""

    path: Path
    kind: str  # video | frames | image
    num_frames: int
    height: int
    width: int
    _reader: object = None
    _files: list[Path] | None = None
    has_alpha: bool = False  # an RGBA image or frame: the LLM and SAM 2 see different pixels

    @property
    def is_image(self) -> bool:
        return self.kind == "image"

    def read(self, indices: list[int], for_llm: bool = False) -> np.ndarray:
        """uint8 `[len(indices), H, W, 3]` for the given source-frame indices, as SAM 2 sees
        them (or, `for_llm`, as the LLM does: they differ only where `has_alpha`)."""
        bad = [i for i in indices if not 0 <= i < self.num_frames]
        if bad:
            raise MediaError(f"{self.path}: frame {bad[0]} out of range (0..{self.num_frames - 1})")
        if not indices:
            return np.zeros((0, self.height, self.width, 3), np.uint8)
        if self.kind == "image":
            return np.stack([_read_image(self.path, for_llm) for _ in indices])
        if self.kind == "frames":
            frames = [_read_image(self._files[i], for_llm) for i in indices]
            for i, f in zip(indices, frames):
                if f.shape[:2] != (self.height, self.width):
                    raise MediaError(f"{self._files[i]}: size {f.shape[1]}x{f.shape[0]} differs from the "
                                     f"first frame's {self.width}x{self.height}")
            return np.stack(frames)
        return self._read_video(indices)

    def read_for_llm(self, indices: list[int]) -> np.ndarray:
        return self.read(indices, for_llm=True)

    def read_views(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(LLM frames, SAM 2 frames) of the same indices, decoded twice only where they differ."""
        llm = self.read(indices, for_llm=True)
        return llm, (self.read(indices) if self.has_alpha else llm)

    def _read_video(self, indices: list[int]) -> np.ndarray:
        try:
            return self._reader.read(indices)
        except Exception as e:  # decoder errors come in many types
            if isinstance(self._reader, _DecordFrames):
                fallback = _pyav_fallback(self, e)
                if fallback is not None:
                    self._reader = fallback
                    return self._read_video(indices)
            raise MediaError(f"{self.path}: cannot decode frames ({e})") from e


def open_media(path: str | Path, frame_files: list[str] | None = None) -> Media:
    """Open a video file, a folder of numbered frames, or an image. `frame_files` names the
    frames of a folder explicitly, in order (otherwise: its images in natural order)."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: file not found")
    if frame_files is not None and not path.is_dir():
        raise MediaError(f"{path}: frame_files given but this is not a folder")
    if path.is_dir():
        if frame_files is not None:
            files = [path / name for name in frame_files]
            missing = next((f for f in files if not f.is_file()), None)
            if missing is not None:
                raise MediaError(f"{missing}: file not found")
        else:
            files = folder_frames(path)
        if not files:
            raise MediaError(f"{path}: folder holds no .jpg/.png frames")
        # every frame's size from its header, so a mixed folder fails whichever frames get sampled
        w, h, has_alpha = _header(files[0])
        for f in files[1:]:
            fw, fh, alpha = _header(f)
            if (fw, fh) != (w, h):
                raise MediaError(f"{f}: size {fw}x{fh} differs from the first frame's {w}x{h} ({files[0].name})")
            has_alpha |= alpha
        return Media(path, "frames", len(files), h, w, _files=files, has_alpha=has_alpha)
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        img = _read_image(path)
        return Media(path, "image", 1, img.shape[0], img.shape[1], has_alpha=_has_alpha(path))
    if ext in VIDEO_EXTS:
        return _open_video(path)
    raise MediaError(f"{path}: unsupported media type {ext or '(no extension)'}")


class _DecordFrames:
    """decord's reader: fast random access where it can decode the file."""

    def __init__(self, path: Path) -> None:
        import decord

        decord.bridge.set_bridge("native")
        self.reader = decord.VideoReader(str(path), num_threads=1)
        self.num_frames = len(self.reader)
        if self.num_frames == 0:
            raise ValueError("decord sees no frames")
        first = self.reader[0].asnumpy()
        if first.ndim != 3 or first.shape[2] != 3:  # decord mis-sizes some odd/rotated frames
            raise ValueError(f"decord returned a frame of shape {first.shape}")
        self.height, self.width = first.shape[:2]
        self.reader.seek(0)

    def read(self, indices: list[int]) -> np.ndarray:
        frames = self.reader.get_batch(indices).asnumpy()
        # decord keeps decoding ahead into memory after a batch until the next call
        # (dmlc/decord#157, #208); parking it on frame 0 stops that
        self.reader.seek(0)
        if frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"decord returned frames of shape {frames.shape[1:]}")
        return frames


class _PyAVFrames:
    """Frames by index from a sequential PyAV decode: for what decord cannot read (AV1, GIF,
    some odd sizes) or where it is not installed. A forward scan continues from where the last
    read stopped; a read further back decodes again from the start. Display rotation is applied
    as decord applies it, so both give the same frames."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self._frames: Iterator[np.ndarray] | None = None
        self._next = 0  # index of the frame `_frames` yields next
        count, first = 0, None
        for frame in self._decode():  # one pass to count: container frame counts are often wrong
            first = frame if first is None else first
            count += 1
        if first is None:
            raise ValueError("no decodable video frames")
        self.num_frames, (self.height, self.width) = count, first.shape[:2]

    def _decode(self) -> Iterator[np.ndarray]:
        import av

        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                turns = (frame.rotation // 90) % 4  # counter-clockwise, as the display matrix says
                yield np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb

    def read(self, indices: list[int]) -> np.ndarray:
        wanted = sorted(set(indices))
        got: dict[int, np.ndarray] = {}
        with self.lock:
            if self._frames is None or wanted[0] < self._next:
                self._frames, self._next = self._decode(), 0
            for frame in self._frames:
                i, self._next = self._next, self._next + 1
                if i in wanted:
                    got[i] = frame
                if i >= wanted[-1]:
                    break
        missing = [i for i in wanted if i not in got]
        if missing:
            raise ValueError(f"frame {missing[0]} did not decode")
        return np.stack([got[i] for i in indices])


def _pyav_fallback(media: Media, error: Exception) -> _PyAVFrames | None:
    """A PyAV reader for a file decord opened but could not decode, if PyAV sees the same video."""
    try:
        reader = _PyAVFrames(media.path)
    except Exception:
        return None
    if (reader.num_frames, reader.height, reader.width) != (media.num_frames, media.height, media.width):
        return None  # a different frame count would shift every index: keep decord's error
    log.info("%s: decord failed (%s); decoding with PyAV", media.path, str(error).splitlines()[0][:200])
    return reader


def _open_video(path: Path) -> Media:
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file")
    decord_error: Exception | None = None
    try:
        reader = _DecordFrames(path)
    except ImportError:
        reader = None
    except Exception as e:  # AV1, GIF, odd sizes…: PyAV decodes what decord cannot
        decord_error, reader = e, None
    if reader is None:
        try:
            reader = _PyAVFrames(path)
        except Exception as e:
            raise MediaError(f"{path}: cannot open video ({e})") from e
        if decord_error is not None:
            log.info("%s: decord cannot open it (%s); decoding with PyAV", path,
                     str(decord_error).splitlines()[0][:200] if str(decord_error) else type(decord_error).__name__)
    return Media(path, "video", reader.num_frames, reader.height, reader.width, _reader=reader)


class BlockReader:
    """`read(a, b)` → frames `indices[a:b]` for a forward scan (SAM 2 `propagate all`), decoded
    at least `block` at a time: one decoder seek per block, at most two blocks held.

    With a (single-worker) `pool`, every decode runs there and the next block is decoded while
    the caller works on the current one, so the model does not wait on the video decoder.
    """

    def __init__(self, media: Media, indices: list[int], block: int = 16,
                 pool: ThreadPoolExecutor | None = None) -> None:
        self.media, self.indices, self.block, self.pool = media, indices, block, pool
        self.start = 0
        self.frames = np.zeros((0, media.height, media.width, 3), np.uint8)
        self._ahead: tuple[int, int, Future] | None = None  # (start, end, decoded frames)

    def read(self, a: int, b: int) -> np.ndarray:
        held_end = self.start + len(self.frames)
        if not (self.start <= a and b <= held_end):
            keep = self.frames[a - self.start:] if self.start <= a < held_end else self.frames[:0]
            first = a + len(keep)  # a request straddling two blocks keeps the held part
            end = min(len(self.indices), max(b, first + self.block))
            fresh = self._decode(first, end)
            self.frames, self.start = (np.concatenate([keep, fresh]) if len(keep) else fresh), a
            nxt = a + len(self.frames)
            if self.pool is not None and nxt < len(self.indices):
                ahead_end = min(len(self.indices), nxt + self.block)
                self._ahead = (nxt, ahead_end, self.pool.submit(self.media.read, self.indices[nxt:ahead_end]))
        return self.frames[a - self.start:b - self.start]

    def _decode(self, a: int, end: int) -> np.ndarray:
        if self.pool is None:
            return self.media.read(self.indices[a:end])
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            frames = ahead[2].result()  # also keeps the decoder to one thread at a time
            if ahead[0] == a and ahead[1] >= end:
                return frames
        return self.pool.submit(self.media.read, self.indices[a:end]).result()


@dataclass
class DecodedFrames:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    indices: list[int]  # source-frame index of each frame


def load_frames(path: str | Path, indices: list[int] | None = None) -> DecodedFrames:
    """Decode all (or the given) frames of a media path."""
    media = open_media(path)
    idx = list(range(media.num_frames)) if indices is None else list(indices)
    return DecodedFrames(media.read(idx), idx)
