import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from unipixel_cli.media import BlockReader, MediaError, load_frames, open_media
from unipixel_cli.model.preprocess import force_prompt_frames, uniform_indices


@pytest.mark.parametrize("n, s, expected", [
    (16, 8, [0, 2, 4, 6, 9, 11, 13, 15]),      # step 15/7 = 2.142857: 4.29→4, 8.57→9
    (20, 16, [0, 1, 3, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16, 18, 19]),
    (5, 16, [0, 1, 2, 3, 4]),                  # fewer frames than asked: all of them
    (1, 16, [0]),
    (9, 3, [0, 4, 8]),
    (11, 3, [0, 5, 10]),
    (6, 4, [0, 2, 3, 5]),                      # 1.667→2, 3.333→3
])
def test_uniform_sampling_matches_hand_computed(n, s, expected):
    assert uniform_indices(n, s) == expected


def test_prompt_frame_replaces_nearest_sampled_index():
    assert force_prompt_frames([0, 2, 4, 6, 9, 11, 13, 15], [5]) == [0, 2, 5, 6, 9, 11, 13, 15]
    assert force_prompt_frames([0, 2, 4], [2]) == [0, 2, 4]


def test_video_decodes_all_frames(conformance_dir):
    media = open_media(conformance_dir / "media" / "video.mp4")
    assert (media.kind, media.num_frames, media.height, media.width) == ("video", 16, 120, 160)
    frames = media.read([0, 5, 15])
    assert frames.shape == (3, 120, 160, 3) and frames.dtype == np.uint8


def test_video_reads_are_exact_after_random_access(conformance_dir):
    media = open_media(conformance_dir / "media" / "video.mp4")
    every = media.read(list(range(16)))
    assert np.array_equal(media.read([15, 3, 9]), every[[15, 3, 9]])
    assert np.array_equal(media.read([4, 5, 6]), every[4:7])  # decoder parked at 0 in between


@pytest.mark.parametrize("ahead", [False, True])
@pytest.mark.parametrize("step", [2, 3])
def test_block_reader_serves_a_forward_scan_from_few_decodes(conformance_dir, ahead, step):
    media = open_media(conformance_dir / "media" / "video.mp4")
    indices = [1, 2, 3, 5, 8, 9, 10, 11, 12, 14]
    every = media.read(list(range(16)))
    calls, threads = [], set()
    real_read = media.read
    media.read = lambda idx: calls.append(list(idx)) or threads.add(threading.current_thread().name) or real_read(idx)
    with ThreadPoolExecutor(1, thread_name_prefix="ahead") as pool:
        scan = BlockReader(media, indices, block=4, pool=pool if ahead else None)
        got = [scan.read(a, min(a + step, len(indices))) for a in range(0, len(indices), step)]
        assert np.array_equal(np.concatenate(got), every[indices])
        # whole blocks, each decoded once, whether or not a request straddles two of them
        assert calls == [indices[0:4], indices[4:8], indices[8:10]]
        assert all(t.startswith("ahead") for t in threads) if ahead else threads == {"MainThread"}
        assert np.array_equal(scan.read(0, 6), every[indices[:6]])  # a jump back decodes again
        assert np.array_equal(scan.read(6, 10), every[indices[6:10]])


def test_frame_folder_uses_natural_sort(tmp_path):
    for i in (1, 2, 10):
        Image.fromarray(np.full((4, 6, 3), i, np.uint8)).save(tmp_path / f"f{i}.png")
    media = open_media(tmp_path)
    assert media.kind == "frames" and media.num_frames == 3
    assert [int(f[0, 0, 0]) for f in media.read([0, 1, 2])] == [1, 2, 10]


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
def test_images_in_any_mode_become_rgb(tmp_path, mode):
    Image.new(mode, (7, 5)).save(tmp_path / "x.png")
    d = load_frames(tmp_path / "x.png")
    assert d.frames.shape == (1, 5, 7, 3) and d.indices == [0]


@pytest.mark.parametrize("name, content, expected", [
    ("missing.mp4", None, "file not found"),
    ("empty.mp4", b"", "empty file"),
    ("corrupt.mp4", b"not a video at all" * 100, "cannot open video"),
    ("corrupt.jpg", b"garbage", "cannot decode image"),
    ("notes.txt", b"hello", "unsupported media type .txt"),
])
def test_bad_media_raise_media_error(tmp_path, name, content, expected):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MediaError, match=expected) as info:
        open_media(path).read([0])
    assert str(path) in str(info.value)


def test_empty_frame_folder_and_out_of_range_frame(tmp_path, conformance_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MediaError, match="no .jpg/.png frames"):
        open_media(tmp_path / "empty")
    with pytest.raises(MediaError, match="frame 99 out of range"):
        open_media(conformance_dir / "media" / "video.mp4").read([99])
