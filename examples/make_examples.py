"""Regenerate the example media and manifests in this folder: `uv run python examples/make_examples.py`."""

from pathlib import Path

from unipixel_cli.synthetic import make_examples

if __name__ == "__main__":
    paths = make_examples(Path(__file__).resolve().parent)
    print("wrote", ", ".join(str(p) for p in paths.values()))
