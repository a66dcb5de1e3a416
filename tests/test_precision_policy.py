"""Our loaded model holds every tensor in the dtype the authors' bf16 model holds it in.

`bf16/dtypes.json` of the conformance fixture lists, for the authors' model loaded by their
builder in bf16, every parameter and buffer with its dtype. Names are mapped as the loader maps
them; the only names allowed to differ are listed (with why) in NAME_EXCEPTIONS.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from .conftest import CONFORMANCE_DIR

DTYPES = CONFORMANCE_DIR / "bf16" / "dtypes.json"
# transformers 4.53 kept a rotary embedding per decoder layer; 5.x shares the model-level one
NAME_EXCEPTIONS = re.compile(r"^model\.language_model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
# transformers 5.x keeps a float32 copy of each RoPE table (`original_inv_freq`) next to `inv_freq`
OURS_ONLY = re.compile(r"\.original_inv_freq$")


def authors_name(ours: str) -> str:
    """Our module path → the authors' state-dict name."""
    name = re.sub(r"^llm\.model\.", "model.", ours)
    name = re.sub(r"^llm\.lm_head\.", "lm_head.", name)
    name = re.sub(r"^heads\.", "", name)
    return re.sub(r"(memory_encoder\.fuser\.layers\.\d+)\.gamma$", r"\1.weight", name)


@pytest.fixture(scope="module")
def bf16_model():
    if not DTYPES.exists():
        pytest.skip("fixture has no bf16/dtypes.json")
    from unipixel_cli.model.loading import load_unipixel

    return load_unipixel(CONFORMANCE_DIR / "tiny-unipixel", device="cpu", dtype="bf16")[0]


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def test_parameters_match_authors_dtypes(bf16_model):
    expected = json.loads(DTYPES.read_text())["parameters"]
    ours = {authors_name(n): _dtype_name(p) for n, p in bf16_model.named_parameters()}
    assert set(ours) == set(expected), (sorted(set(ours) - set(expected))[:5], sorted(set(expected) - set(ours))[:5])
    wrong = {n: (ours[n], d) for n, d in expected.items() if ours[n] != d}
    assert not wrong, wrong


def test_buffers_match_authors_dtypes(bf16_model):
    expected = {n: d for n, d in json.loads(DTYPES.read_text())["buffers"].items() if not NAME_EXCEPTIONS.match(n)}
    ours = {authors_name(n): _dtype_name(b) for n, b in bf16_model.named_buffers() if b.is_floating_point()}
    extra = {n: d for n, d in ours.items() if OURS_ONLY.search(n)}
    assert set(extra.values()) <= {"float32"}, extra
    ours = {n: d for n, d in ours.items() if n not in extra}
    assert set(ours) == set(expected), (sorted(set(ours) - set(expected)), sorted(set(expected) - set(ours)))
    wrong = {n: (ours[n], d) for n, d in expected.items() if ours[n] != d}
    assert not wrong, wrong


def test_fp32_keeps_every_tensor_in_float32():
    from unipixel_cli.model.loading import load_unipixel

    model = load_unipixel(CONFORMANCE_DIR / "tiny-unipixel", device="cpu", dtype="fp32")[0]
    tensors = [*model.named_parameters(), *model.named_buffers()]
    assert {t.dtype for _, t in tensors if t.is_floating_point()} == {torch.float32}
