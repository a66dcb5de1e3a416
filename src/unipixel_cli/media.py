"""Decode videos (decord, PyAV fallback), numbered frame folders and images to uint8 RGB frames.

Every failure — missing, empty, corrupt or unsupported media — raises `MediaError` with a
message that says which file and what is wrong. Frames are read by index so callers can
pull only the sampled frames, or stream `propagate all` in bounded chunks.
"""

from __future__ import annotations

import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

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


def _read_image(path: Path, for_llm: bool = False) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return to_rgb(img, for_llm)
    except FileNotFoundError as e:
        raise MediaError(f"{path}: file not found") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise MediaError(f"{path}: cannot decode image ({e})") from e


def _has_alpha(path: Path) -> bool:
    """Whether the LLM's view of an image differs from SAM 2's (header only, no decode)."""
    try:
        with Image.open(path) as img:
            return img.mode == "RGBA"
    except (UnidentifiedImageError, OSError, SyntaxError):
        return False  # the decode reports it


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
            if hasattr(self._reader, "get_batch"):
                frames = self._reader.get_batch(indices).asnumpy()
                # decord keeps decoding ahead into memory after a batch until the next call
                # (dmlc/decord#157, #208); parking it on frame 0 stops that
                self._reader.seek(0)
                return frames
            return np.stack([self._reader[i] for i in indices])
        except Exception as e:  # decoder errors come in many types
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
            files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS),
                           key=lambda p: natural_key(p.name))
        if not files:
            raise MediaError(f"{path}: folder holds no .jpg/.png frames")
        first = _read_image(files[0])
        return Media(path, "frames", len(files), first.shape[0], first.shape[1], _files=files,
                     has_alpha=any(_has_alpha(f) for f in files))
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        img = _read_image(path)
        return Media(path, "image", 1, img.shape[0], img.shape[1], has_alpha=_has_alpha(path))
    if ext in VIDEO_EXTS:
        return _open_video(path)
    raise MediaError(f"{path}: unsupported media type {ext or '(no extension)'}")


def _open_video(path: Path) -> Media:
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file")
    try:
        import decord

        decord.bridge.set_bridge("native")
        try:
            reader = decord.VideoReader(str(path), num_threads=1)
        except Exception as e:
            raise MediaError(f"{path}: cannot open video ({e})") from e
        n = len(reader)
        if n == 0:
            raise MediaError(f"{path}: video has no frames")
        h, w = reader[0].shape[:2]
        return Media(path, "video", n, h, w, _reader=reader)
    except ImportError:
        return _open_video_pyav(path)


class _PyAVFrames:
    """Random access over a PyAV-decoded video (used where decord has no wheel)."""

    def __init__(self, path: Path) -> None:
        import av

        with av.open(str(path)) as container:
            self.frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.frames[i]


def _open_video_pyav(path: Path) -> Media:
    try:
        reader = _PyAVFrames(path)
    except Exception as e:
        raise MediaError(f"{path}: cannot open video ({e})") from e
    if len(reader) == 0:
        raise MediaError(f"{path}: video has no frames")
    h, w = reader[0].shape[:2]
    return Media(path, "video", len(reader), h, w, _reader=reader)


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
