import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE_DIR = Path(os.environ.get("UNIPIXEL_CONFORMANCE_DIR", ROOT.parent / "shared" / "conformance"))


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    if not (CONFORMANCE_DIR / "cases.jsonl").exists():
        pytest.fail(f"conformance fixture not found at {CONFORMANCE_DIR} (set UNIPIXEL_CONFORMANCE_DIR)")
    return CONFORMANCE_DIR


@pytest.fixture(scope="session")
def fixture_model(conformance_dir):
    from unipixel_cli.model.loading import load_unipixel

    return load_unipixel(conformance_dir / "tiny-unipixel", device="cpu", dtype="fp32")
