"""`unipixel render` without a model: where it writes, what it refuses, and what the report shows."""

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unipixel_cli.render import colour

from .results_factory import EXAMPLES, IMAGE_MASKS, VIDEO_MASKS, error_row, obj, row, write_manifest, write_results

LONG_ANSWER = "The ball keeps moving " * 80 + "\n" * 60 + "and stops."


def run(*args, cwd=None, env=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("UNIPIXEL_")} | (env or {})
    return subprocess.run([sys.executable, "-m", "unipixel_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=full_env)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    # PixelQA rows: points and boxes live in the manifest the run recorded
    manifest = write_manifest(tmp / "qa.jsonl", [
        {"id": "vid", "video": "clips/shapes0.mp4", "question": "What is [0] doing?",
         "objects": [{"id": 0, "frame": 5, "point": [60, 90]}, {"id": 1, "frame": 5, "box": [100, 60, 150, 110]}]},
        {"id": "bad", "video": "missing.mp4", "question": "x", "objects": [{"id": 0, "point": [1, 1]}]},
        {"id": "img", "image": "still.png", "question": "What is [3] next to [4]?",
         "objects": [{"id": 3, "point": [20, 100]}, {"id": 4, "box": [110, 10, 150, 50]}]},
        {"id": "none", "image": "still.png", "question": "Anything?", "objects": [{"id": 0, "point": [5, 5]}]},
    ])
    rows = [
        row(3, "img", "still.png", [0], [obj(3, IMAGE_MASKS[3], 0.75, "point"),
                                         obj(4, [np.zeros_like(IMAGE_MASKS[3][0])], 0.1, "box")],
            task="pixelqa", answer=LONG_ANSWER, choice="B"),
        error_row(2, "bad"),
        row(4, "none", "still.png", [0], [], answer="Nothing to segment."),
        row(1, "vid", "clips/shapes0.mp4", [0, 5, 10], [obj(i, VIDEO_MASKS[i], 0.5 + 0.25 * i) for i in (0, 1)],
            task="pixelqa"),
    ]
    return write_results(tmp / "results", manifest=manifest, rows=rows)


def test_render_has_its_own_out_option_and_env(results, tmp_path):
    # UNIPIXEL_OUT belongs to segment/pixelqa; with it exported, render used to write into the dataset
    r = run("render", results, "--format", "png", cwd=tmp_path, env={"UNIPIXEL_OUT": str(results)})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "unipixel-render" / "index.html").exists()
    assert not (results / "index.html").exists() and not (results / "media").exists()
    assert len(pd.read_parquet(results)) == 4
    r = run("render", results, "--format", "png", env={"UNIPIXEL_RENDER_OUT": str(tmp_path / "by-env")})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "by-env" / "index.html").exists()
    help_text = run("render", "--help", env={"COLUMNS": "200"}).stdout
    assert "UNIPIXEL_RENDER_OUT" in help_text and "Output dataset directory" not in help_text


@pytest.mark.parametrize("case", ["into-results", "missing", "empty", "unknown-ids"])
def test_render_refusals_exit_2_with_one_line(results, tmp_path, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    args, words = {
        "into-results": ((results, "-o", results), "is a results dataset"),
        "missing": ((tmp_path / "nope", "-o", tmp_path / "r"), "no such results directory"),
        "empty": ((empty, "-o", tmp_path / "r"), "holds no results"),
        "unknown-ids": ((results, "-o", tmp_path / "r", "--ids", "vid,nope,gone"), "nope, gone"),
    }[case]
    r = run("render", *args)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
    assert sorted(p.name for p in results.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in results.glob("part-*.parquet"))


def test_points_and_boxes_are_drawn_on_their_frames(results, tmp_path):
    r = run("render", results, "-o", tmp_path / "html", "--format", "png")
    assert r.returncode == 0, r.stderr
    still = np.asarray(Image.open(EXAMPLES / "still.png").convert("RGB"))
    img = np.asarray(Image.open(tmp_path / "html" / "media" / "img.png").convert("RGB"))
    assert tuple(img[100, 20]) == colour(3) != tuple(still[100, 20])  # point centre
    assert tuple(img[30, 110]) == colour(4) != tuple(still[30, 110])  # left edge of the box
    # video: the prompts are on frame 5 only, the second tile of the contact sheet (lossless PNG)
    sheet = np.asarray(Image.open(tmp_path / "html" / "media" / "vid_sheet.png").convert("RGB"))
    tile_w = sheet.shape[1] // 3
    assert tuple(sheet[90, tile_w + 60]) == colour(0)
    assert tuple(sheet[90, 60]) != colour(0) and tuple(sheet[90, 2 * tile_w + 60]) != colour(0)


class _Visible(HTMLParser):
    """Text of the filter buttons and of each card, in document order."""

    def __init__(self):
        super().__init__()
        self.buttons, self.cards, self._in = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "button":
            self._in = "button"
            self.buttons.append("")
        elif tag == "article":
            self._in = "card"
            self.cards.append("")

    def handle_endtag(self, tag):
        if tag in ("button", "article"):
            self._in = None

    def handle_data(self, data):
        if self._in == "button":
            self.buttons[-1] += data
        elif self._in == "card":
            self.cards[-1] += data


MEASURE = """<script>
window.addEventListener('load', function () {
  var out = {};
  document.querySelectorAll('.card').forEach(function (c) {
    var a = c.querySelector('.answer');
    out[c.querySelector('h2').firstChild.textContent.trim()] = {card_w: c.offsetWidth, answer_h: a.offsetHeight};
  });
  document.querySelectorAll('details.answer').forEach(function (d) { d.open = true; });
  document.querySelectorAll('details.answer').forEach(function (d) { out.opened_h = d.offsetHeight; });
  document.querySelector('[data-filter="error"]').click();
  out.shown_after_error_filter = Array.prototype.filter.call(document.querySelectorAll('.card'),
    function (c) { return c.offsetParent !== null; }).length;
  var pre = document.createElement('pre'); pre.id = 'measure'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script></body>"""


def test_report_in_headless_chromium(results, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian chromium not installed (.ci/run installs it)")
    r = run("render", results, "-o", tmp_path / "html", "--format", "png")
    assert r.returncode == 0, r.stderr
    index = tmp_path / "html" / "index.html"
    measured = tmp_path / "html" / "measured.html"  # same folder, so the media links resolve alike
    measured.write_text(index.read_text().replace("</body>", MEASURE))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--window-size=1200,900",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", measured.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = _Visible()
    page.feed(dom.stdout)
    buttons = [" ".join(b.split()) for b in page.buttons]
    assert buttons == ["all (4)", "with objects (2)", "no objects (1)", "errors (1)"]
    cards = [" ".join(c.split()) for c in page.cards]
    assert [c.split()[0] for c in cards] == ["vid", "bad", "img", "none"]  # manifest lines 1..4
    assert "2 objects · score [0] 0.50, [1] 0.75 · frames 0, 5, 10" in cards[0]
    assert "missing.mp4: file not found" in cards[1]
    assert "2 objects · score [3] 0.75, [4] 0.10 · frame 0 · choice B" in cards[2]
    assert "0 objects · frame 0" in cards[3]
    m = json.loads(re.search(r'<pre id="measure">(.*?)</pre>', dom.stdout, re.S).group(1).replace("&quot;", '"'))
    # the long answer is clamped and opens into a bounded, scrollable box; cards keep the grid width
    assert m["img"]["answer_h"] <= 3 * m["vid"]["answer_h"] + 40
    assert m["opened_h"] <= 16 * 12 + 8
    assert len({m[k]["card_w"] for k in ("vid", "bad", "img", "none")}) == 1
    assert m["shown_after_error_filter"] == 1
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", index.as_uri()], capture_output=True, timeout=120)
    assert Image.open(shot).size == (1200, 900)


def test_live_render_into_the_results_dataset_is_refused(tmp_path):
    r = run("segment", EXAMPLES / "videos.jsonl", "-o", tmp_path / "res", "--render", tmp_path / "res",
            "--model", "tiny-random")
    assert r.returncode == 2, r.stderr
    assert "--render must be a folder of its own" in r.stderr
    assert not (tmp_path / "res").exists()
