"""`unipixel render` and `--render`: overlay pixels where the RLE says, and an HTML report in Chromium."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unipixel_cli.output import read_results, rle_decode
from unipixel_cli.render import ALPHA, colour

from .helpers import cli

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, conformance_dir):
    tmp = tmp_path_factory.mktemp("render")
    img = conformance_dir / "media" / "image.png"
    manifest = tmp / "m.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"id": "img", "image": str(img), "prompt": "Please segment the blue box and the green ball.",
                    "max_new_tokens": 24}),
        json.dumps({"id": "vid", "video": str(conformance_dir / "media" / "video.mp4"),
                    "prompt": "Please segment the red ball.", "sample_frames": 8, "max_new_tokens": 24}),
        json.dumps({"id": "bad", "video": "missing.mp4", "prompt": "x"}),
    ]))
    r = cli("segment", manifest, "-o", tmp / "out", "--model", conformance_dir / "tiny-unipixel",
            "--render", tmp / "live")
    assert r.returncode == 3, r.stderr
    r = cli("render", tmp / "out", "-o", tmp / "html", "--format", "gif")
    assert r.returncode == 0, r.stderr
    return tmp


def test_overlay_pixels_follow_the_rle(rendered, conformance_dir):
    row = read_results(rendered / "out").set_index("id").loc["img"]
    frame = np.asarray(Image.open(conformance_dir / "media" / "image.png").convert("RGB")).astype(float)
    out = np.asarray(Image.open(rendered / "html" / "media" / "img.png").convert("RGB")).astype(float)
    h, w = frame.shape[:2]
    union = np.zeros((h, w), bool)
    assert len(row["objects"]) >= 1
    for obj in row["objects"]:
        m = rle_decode(obj["masks"][0])
        union |= m
        ys, xs = np.nonzero(m)
        far = np.argmax((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)  # away from the id label
        y, x = ys[far], xs[far]
        expected = (1 - ALPHA) * frame[y, x] + ALPHA * np.array(colour(int(obj["object_id"])))
        assert np.abs(out[y, x] - expected).max() <= 1.0
    ys, xs = np.nonzero(~union)
    sample = np.random.default_rng(0).choice(len(ys), 50)
    assert np.array_equal(out[ys[sample], xs[sample]], frame[ys[sample], xs[sample]])


def test_video_overlays_and_live_render(rendered):
    assert (rendered / "html" / "media" / "vid.gif").exists()
    gif = Image.open(rendered / "html" / "media" / "vid.gif")
    assert gif.n_frames == 8
    assert (rendered / "live" / "media" / "vid.mp4").exists()
    assert (rendered / "live" / "index.html").exists()


def test_index_html_in_headless_chromium(rendered):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian chromium not installed (.ci/run installs it)")
    index = rendered / "html" / "index.html"
    ARTIFACTS.mkdir(exist_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={rendered / 'chrome-profile'}", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([browser, *flags, "--dump-dom", index.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert len(re.findall(r'<article class="card', dom.stdout)) == 3
    assert 'data-status="error"' in dom.stdout and "missing.mp4" in dom.stdout
    console_errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and "rror" in line]
    assert console_errors == []
    shot = ARTIFACTS / "render_index.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,900", index.as_uri()],
                   capture_output=True, text=True, timeout=120)
    assert shot.exists() and Image.open(shot).size == (1200, 900)
