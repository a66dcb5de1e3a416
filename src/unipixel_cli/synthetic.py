"""Small synthetic media (moving shapes) and manifests for examples, smoke runs and benchmarks."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = [("red", (220, 40, 40), "ball"), ("blue", (40, 80, 220), "box"), ("yellow", (230, 210, 40), "triangle"),
          ("green", (40, 180, 70), "ball")]


def moving_shapes(num_frames: int, height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    """uint8 `[T, H, W, 3]`: a few coloured shapes moving over a grey background."""
    return np.stack(list(iter_moving_shapes(num_frames, height, width, seed)))


@dataclass(frozen=True)
class ShapeTrack:
    """One shape of a `moving_shapes` clip: its colour, kind and top-left corner per frame."""

    color: str
    rgb: tuple[int, int, int]
    kind: str  # ball | box | triangle
    corners: np.ndarray  # [T, 2] float (x, y) of the 24x24 bounding square

    def centers(self) -> np.ndarray:
        return self.corners + SHAPE_SIZE / 2

    def masks(self, height: int, width: int) -> np.ndarray:
        """bool `[T, H, W]`: the pixels this shape covers in each frame (drawn alone)."""
        out = []
        for x, y in self.corners:
            img = Image.new("L", (width, height), 0)
            _draw_shape(ImageDraw.Draw(img), self.kind, x, y, 1)
            out.append(np.asarray(img, dtype=bool))
        return np.stack(out)


SHAPE_SIZE = 24


def shape_tracks(num_frames: int, height: int = 120, width: int = 160, seed: int = 0) -> list[ShapeTrack]:
    """The shapes of `moving_shapes(num_frames, height, width, seed)`, in drawing order."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(SHAPES), size=2, replace=False)
    starts = rng.uniform([10, 10], [width - 40, height - 40], size=(2, 2))
    speeds = rng.uniform(-2.5, 2.5, size=(2, 2))
    t = np.arange(num_frames)[:, None]
    tracks = []
    for k, idx in enumerate(picks):
        corners = np.clip(starts[k] + speeds[k] * t, [0, 0], [width - 25, height - 25])
        color, rgb, kind = SHAPES[idx]
        tracks.append(ShapeTrack(color, rgb, kind, corners))
    return tracks


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, fill) -> None:
    s = SHAPE_SIZE
    if kind == "ball":
        draw.ellipse([x, y, x + s, y + s], fill=fill)
    elif kind == "box":
        draw.rectangle([x, y, x + s, y + s], fill=fill)
    else:
        draw.polygon([(x + s / 2, y), (x, y + s), (x + s, y + s)], fill=fill)


def iter_moving_shapes(num_frames: int, height: int = 120, width: int = 160, seed: int = 0) -> Iterator[np.ndarray]:
    """The frames of `moving_shapes` one at a time (long clips without holding them all)."""
    tracks = shape_tracks(num_frames, height, width, seed)
    for t in range(num_frames):
        img = Image.new("RGB", (width, height), (128, 128, 128))
        draw = ImageDraw.Draw(img)
        for track in tracks:
            x, y = track.corners[t]
            _draw_shape(draw, track.kind, x, y, track.rgb)
        yield np.asarray(img)


def write_video(path: Path, frames: np.ndarray | Iterable[np.ndarray], fps: int = 10) -> Path:
    """Encode uint8 RGB frames (an array or any iterable of `[H, W, 3]`) as H.264 (or MPEG-4).

    Byte-for-byte reproducible for a given PyAV build: one encoder thread (x264 splits frames
    into slices by thread count, which follows the machine's cores) and bit-exact muxing (no
    library version string in the container)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = iter(frames)
    first = next(frames)
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = first.shape[1], first.shape[0], "yuv420p"
        stream.thread_count = 1
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for f in itertools.chain([first], frames):
            # explicit single-threaded colour conversion: the encoder's implicit one picks threads itself
            yuv = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p", threads=1)
            for packet in stream.encode(yuv):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_frame_folder(path: Path, frames: np.ndarray) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(path / f"{i:05d}.jpg", quality=92)
    return path


def make_examples(root: Path, num_videos: int = 3, num_frames: int = 24) -> dict[str, Path]:
    """Write media plus `videos.jsonl` (segment) and `prompts.jsonl` (pixelqa) under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    seg_rows, qa_rows = [], []
    for i in range(num_videos):
        frames = moving_shapes(num_frames, seed=i)
        name = f"clips/shapes{i}.mp4"
        write_video(root / name, frames)
        seg_rows.append({"id": f"v{i}", "video": name, "prompt": "Please segment the moving ball."})
        qa_rows.append({"id": f"q{i}", "video": name, "question": "What is [0] doing?",
                        "objects": [{"id": 0, "frame": 3, "point": [80, 60]}]})
    folder = write_frame_folder(root / "clips/shapes_frames", moving_shapes(num_frames, seed=10))
    seg_rows.append({"id": "f0", "frames": str(folder.relative_to(root)),
                     "prompt": "Where is the box? Please provide the segmentation mask.", "propagate": "all"})
    Image.fromarray(moving_shapes(1, seed=20)[0]).save(root / "still.png")
    seg_rows.append({"id": "i0", "image": "still.png", "prompt": "Please segment the triangle."})
    qa_rows.append({"id": "q_img", "image": "still.png", "question": "What is [0] next to [1]?",
                    "objects": [{"id": 0, "point": [40, 40]}, {"id": 1, "box": [90, 50, 130, 90]}],
                    "options": ["(A) a ball", "(B) a box"]})
    (root / "videos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in seg_rows))
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa_rows))
    return {"videos": root / "videos.jsonl", "prompts": root / "prompts.jsonl"}


# the seed behind each medium `make_examples` writes (media path as the manifests give it)
EXAMPLE_SEEDS = {"clips/shapes0.mp4": 0, "clips/shapes1.mp4": 1, "clips/shapes2.mp4": 2,
                 "clips/shapes_frames": 10, "still.png": 20}
EXAMPLE_FRAMES = {"clips/shapes_frames": 24, "still.png": 1}  # videos: `num_frames` (24)


def example_tracks(media: str, num_frames: int = 24) -> list[ShapeTrack]:
    """The shapes in one of `make_examples`' media (ground truth for the smoke checkpoint)."""
    return shape_tracks(EXAMPLE_FRAMES.get(media, num_frames), seed=EXAMPLE_SEEDS[media])
