"""`examples/make_examples.py` regenerates the committed examples byte for byte."""

import filecmp
import subprocess
import sys
from pathlib import Path

import av
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# The committed clips were encoded by the libx264 bundled with this PyAV (the version uv.lock
# pins for Python 3.11); other PyAV builds bundle other encoders, whose bytes differ.
CLIPS_MADE_WITH_PYAV = "18.1.0"


def regenerate(into: Path) -> Path:
    script = into / "make_examples.py"
    script.write_bytes((EXAMPLES / "make_examples.py").read_bytes())
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return into


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def differing(a: Path, b: Path) -> list[str]:
    """Files missing on one side or whose bytes differ, with their sizes to tell the cause."""
    names = sorted(set(files(a)) | set(files(b)))
    return [f"{f} ({(a / f).stat().st_size if (a / f).exists() else 'missing'} vs "
            f"{(b / f).stat().st_size if (b / f).exists() else 'missing'} bytes)"
            for f in names if not ((a / f).exists() and (b / f).exists() and filecmp.cmp(a / f, b / f, shallow=False))]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return regenerate(tmp_path_factory.mktemp("examples"))


def test_two_runs_give_the_same_bytes(generated, tmp_path):
    assert differing(generated, regenerate(tmp_path)) == []


def test_committed_examples_are_what_the_script_writes(generated):
    if av.__version__ != CLIPS_MADE_WITH_PYAV:
        pytest.skip(f"clips were encoded with PyAV {CLIPS_MADE_WITH_PYAV}'s libx264; this is PyAV {av.__version__}")
    assert differing(generated, EXAMPLES) == []
