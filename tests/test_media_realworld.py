"""Real-world media: what decord cannot decode falls back to PyAV with the same frames; images
are read as viewers show them (EXIF orientation, 16-bit scaled, any Pillow mode); frame folders
skip hidden files and refuse mixed frame sizes whatever frames get sampled."""

import struct
import zlib

import av
import numpy as np
import pytest
from PIL import Image

from unipixel_cli import media as media_mod
from unipixel_cli.media import MediaError, _DecordFrames, _PyAVFrames, displayed, open_media, to_rgb

FRAMES = 10


def pattern(i, h, w):
    """Frame i: red level 20·i everywhere, a green block in the top-left quarter."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 20 * i
    img[: h // 2, : w // 2, 1] = 200
    return img


def encode(path, codec, w, h, pix_fmt="yuv420p", rotation=None):
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(FRAMES):
            for packet in stream.encode(av.VideoFrame.from_ndarray(pattern(i, h, w), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def reference_decode(path):
    """Every frame of a sequential PyAV decode, rotated by the display matrix (counter-clockwise)."""
    with av.open(str(path)) as container:
        return np.stack([np.rot90(f.to_ndarray(format="rgb24"), k=f.rotation // 90)
                         for f in container.decode(video=0)])


def av1_encoder():
    return next((c for c in ("libsvtav1", "libaom-av1", "librav1e") if c in av.codecs_available), None)


VIDEOS = {  # name: (file, codec, width, height, pix_fmt)
    "av1": ("a.mp4", "av1", 64, 48, "yuv420p"),
    "animated-gif": ("anim.gif", "gif", 32, 24, "rgb8"),
    "h264-48x1200": ("tall.mp4", "libx264", 48, 1200, "yuv420p"),
    "h264-16x16": ("tiny.mp4", "libx264", 16, 16, "yuv420p"),
}


@pytest.mark.parametrize("kind", list(VIDEOS))
def test_videos_decord_cannot_read_decode_with_pyav(tmp_path, kind):
    name, codec, w, h, pix = VIDEOS[kind]
    if codec == "av1":
        codec = av1_encoder()
        if codec is None:
            pytest.skip("this PyAV build has no AV1 encoder (libsvtav1, libaom-av1, librav1e)")
    path = encode(tmp_path / name, codec, w, h, pix)
    media = open_media(path)
    assert (media.num_frames, media.height, media.width) == (FRAMES, h, w)
    frames = media.read(list(range(FRAMES)))
    assert np.array_equal(frames, reference_decode(path))
    # and they are the frames that were encoded: lossy codecs are close; GIF's rgb8 palette has
    # 8 red levels (steps of ≈36), so a quantised value can be up to a step away
    red = frames[:, h - 1, w - 1, 0].astype(int)
    assert np.all(np.abs(red - 20 * np.arange(FRAMES)) <= (36 if codec == "gif" else 12)), red
    assert np.array_equal(media.read([7, 2, 7]), frames[[7, 2, 7]])  # backwards and repeated reads


@pytest.mark.parametrize("rotation", [None, 90, 270])
def test_decord_and_pyav_give_identical_frames_where_both_read(tmp_path, rotation):
    path = encode(tmp_path / "v.mp4", "libx264", 320, 256, rotation=rotation)
    by_decord = _DecordFrames(path).read(list(range(FRAMES)))
    by_pyav = _PyAVFrames(path).read(list(range(FRAMES)))
    assert by_decord.shape == ((FRAMES, 256, 320, 3) if rotation is None else (FRAMES, 320, 256, 3))
    assert np.array_equal(by_decord, by_pyav)


def test_conformance_video_same_frames_with_both_decoders(conformance_dir):
    path = conformance_dir / "media" / "video.mp4"
    assert np.array_equal(_DecordFrames(path).read(list(range(16))), _PyAVFrames(path).read(list(range(16))))


def test_decord_failing_mid_file_falls_back_to_pyav(tmp_path, monkeypatch):
    path = encode(tmp_path / "v.mp4", "libx264", 64, 48)
    expected = reference_decode(path)
    media = open_media(path)
    assert isinstance(media._reader, _DecordFrames)

    def broken(self, indices):
        raise RuntimeError("DECORDArrayCopyFromTo: The size must exactly match")

    monkeypatch.setattr(_DecordFrames, "read", broken)
    assert np.array_equal(media.read([1, 5, 9]), expected[[1, 5, 9]])
    assert isinstance(media._reader, media_mod._PyAVFrames)


def test_undecodable_video_is_a_media_error_naming_the_file(tmp_path):
    path = tmp_path / "bad.gif"
    path.write_bytes(b"GIF89a" + b"\x00" * 50)
    with pytest.raises(MediaError, match="cannot open video") as info:
        open_media(path)
    assert str(path) in str(info.value)


# -- images -----------------------------------------------------------------------------

def marked(w, h):
    img = np.zeros((h, w, 3), np.uint8)
    img[:6, :6] = 255  # white block in the stored top-left corner
    return img


@pytest.mark.parametrize("orientation, corner", [
    # EXIF: 6 = the stored image is shown turned 90° clockwise (stored top-left → displayed top-right),
    # 8 = 90° counter-clockwise (→ bottom-left), 3 = 180° (→ bottom-right), 1 = as stored
    (1, "top-left"), (3, "bottom-right"), (6, "top-right"), (8, "bottom-left")])
def test_exif_orientation_is_applied(tmp_path, orientation, corner):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(marked(40, 20)).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    media = open_media(tmp_path / "photo.jpg")
    w, h = (20, 40) if orientation in (6, 8) else (40, 20)
    assert (media.width, media.height) == (w, h)
    frame = media.read([0])[0]
    rows = slice(0, 6) if corner.startswith("top") else slice(h - 6, h)
    cols = slice(0, 6) if corner.endswith("left") else slice(w - 6, w)
    assert frame[rows, cols].mean() > 200 and frame.mean() < 60


def test_frame_folder_sizes_follow_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(marked(40, 20)).save(tmp_path / "f1.jpg", exif=exif)  # shown as 20x40
    Image.fromarray(marked(20, 40)).save(tmp_path / "f2.jpg")
    media = open_media(tmp_path)
    assert (media.width, media.height) == (20, 40)
    assert media.read([0, 1]).shape == (2, 40, 20, 3)


def png16(path, rgb16):
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 257 * 37]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    frame = open_media(tmp_path / "g16.png").read([0])[0]
    assert frame[0, :, 0].tolist() == [0, 100, 255, 37] and np.all(frame[..., 0] == frame[..., 2])


def test_16bit_rgb_png_is_scaled(tmp_path):
    rgb = np.array([[[65535, 257 * 128, 0], [257 * 10, 257 * 20, 257 * 30]]], np.uint16)
    frame = open_media(png16(tmp_path / "c16.png", rgb)).read([0])[0]
    assert frame.tolist() == [[[255, 128, 0], [10, 20, 30]]]


def one_pixel(mode):
    """A 2x2 image in `mode` whose displayed colour is known from the mode's definition."""
    values = {
        "1": (1, (255, 255, 255)), "L": (100, (100, 100, 100)), "LA": ((100, 255), (100, 100, 100)),
        "La": ((100, 255), (100, 100, 100)), "RGB": ((10, 20, 30), (10, 20, 30)),
        "RGBX": ((10, 20, 30, 0), (10, 20, 30)), "RGBA": ((10, 20, 30, 255), (10, 20, 30)),
        "RGBa": ((10, 20, 30, 255), (10, 20, 30)), "CMYK": ((0, 0, 0, 0), (255, 255, 255)),
        "YCbCr": ((128, 128, 128), (128, 128, 128)), "HSV": ((0, 0, 200), (200, 200, 200)),
        "LAB": ((255, 128, 128), (255, 255, 255)), "I": (257 * 100, (100, 100, 100)),
        "I;16": (257 * 100, (100, 100, 100)), "I;16B": (257 * 100, (100, 100, 100)),
        "F": (0.5, (128, 128, 128)),
    }
    fill, expected = values[mode]
    return Image.new(mode, (2, 2), fill), expected


@pytest.mark.parametrize("mode", ["1", "L", "LA", "La", "RGB", "RGBX", "RGBA", "RGBa", "CMYK", "YCbCr", "HSV",
                                  "LAB", "I", "I;16", "I;16B", "F"])
def test_any_pillow_mode_reads_as_its_colour(tmp_path, mode):
    img, expected = one_pixel(mode)
    try:  # through a file where Pillow can write the mode, else as an opened image would be
        img.save(tmp_path / "x.tiff")
        frame = open_media(tmp_path / "x.tiff").read([0])[0]
    except (OSError, ValueError, KeyError):
        frame = to_rgb(displayed(img))
    assert frame.shape == (2, 2, 3) and frame.dtype == np.uint8
    assert np.abs(frame.astype(int) - expected).max() <= 2, (mode, frame[0, 0])


def test_palette_image_reads_its_palette_colour(tmp_path):
    img = Image.new("P", (3, 2), 1)
    img.putpalette([0, 0, 0, 250, 120, 5] + [0] * 762)
    img.save(tmp_path / "p.png")
    assert open_media(tmp_path / "p.png").read([0])[0, 1, 2].tolist() == [250, 120, 5]


# -- frame folders ----------------------------------------------------------------------

def test_hidden_and_appledouble_files_are_not_frames(tmp_path):
    for i in (1, 2, 3):
        Image.fromarray(np.full((4, 6, 3), i, np.uint8)).save(tmp_path / f"{i:03d}.jpg")
    (tmp_path / "._001.jpg").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 80)  # AppleDouble resource fork
    (tmp_path / ".hidden.png").write_bytes(b"not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\x00" * 10)
    media = open_media(tmp_path)
    assert media.num_frames == 3 and [f.name for f in media._files] == ["001.jpg", "002.jpg", "003.jpg"]
    assert media.read([0, 1, 2]).shape == (3, 4, 6, 3)


def test_mixed_frame_sizes_are_an_error_whatever_gets_sampled(tmp_path):
    for i in range(12):
        size = (8, 6) if i != 7 else (8, 5)
        Image.new("RGB", size, (i, i, i)).save(tmp_path / f"f{i}.png")
    with pytest.raises(MediaError, match=r"f7\.png: size 8x5 differs from the first frame's 8x6"):
        open_media(tmp_path)
