"""Reproduce the authors' outputs on the conformance fixture: every case of the root fixture
and of every sub-fixture with the same layout (`more/`), in float32 and in bfloat16.

Criteria (fixture README): exact input_ids, position ids, grids and generated ids per model
call; per-frame mask IoU >= 0.98 (mean >= 0.99); float32 intermediates within 1e-3 (SAM 2
low-res logits 1e-2). In bf16 the same discrete results are required; the float
intermediates must be no further from the authors' bf16 values than a few bf16 ulps
(see BF16_TOL). Frames after a SAM 2 multimask near-tie the fixture lists may go the other
way in bf16 and are exempt from the per-frame bound.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .conformance_harness import (
    compare,
    fixture_dirs,
    golden_dir,
    load_cases,
    load_golden,
    near_tie_frames,
    run_case,
)
from .conftest import CONFORMANCE_DIR

pytestmark = pytest.mark.conformance

FP32_TOL = {"lowres_logits": 1e-2}  # everything else 1e-3
# bf16: max abs difference allowed per kind of intermediate. The values are O(1) (O(10) for
# SAM 2 logits), where one bf16 ulp is 2^-7..2^-5 (2^-3 for logits); these bounds allow a few
# ulps and are far below a real policy mistake (measured: a float32-vs-bf16 head or PE is 0.1–40)
BF16_TOL = {"seg_hidden": 0.25, "seg_token": 0.0625, "lowres_logits": 4.0, "ref_proj_in": 0.0625,
            "ref_emb": 0.0625, "mem_feat": 0.25, "mem_emb": 0.0625}


def _params():
    if not (CONFORMANCE_DIR / "cases.jsonl").exists():
        return [pytest.param(None, None, None, marks=pytest.mark.skip(reason="no conformance fixture"))]
    out = []
    for folder in fixture_dirs(CONFORMANCE_DIR):
        name = folder.name if folder != CONFORMANCE_DIR else "root"
        for dtype in ("fp32", "bf16"):
            if golden_dir(folder, dtype) is None:
                continue
            for case in load_cases(folder):
                out.append(pytest.param(folder, dtype, case, id=f"{name}-{dtype}-{case['id']}"))
    return out


@pytest.fixture(scope="module")
def models(conformance_dir):
    from unipixel_cli.model.loading import load_unipixel

    cache = {}

    def get(dtype: str):
        if dtype not in cache:
            cache[dtype] = load_unipixel(conformance_dir / "tiny-unipixel", device="cpu", dtype=dtype)
        return cache[dtype]

    return get


@pytest.fixture()
def one_thread():
    # the goldens were made with 1 torch thread; bf16 CPU kernels split work by thread count
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize(("folder", "dtype", "case"), _params())
def test_conformance_case(folder, dtype, case, models, one_thread):
    model, proc = models(dtype)
    golden, inter = load_golden(golden_dir(folder, dtype), case["id"])
    exempt = near_tie_frames(golden) if dtype == "bf16" else set()
    runs = run_case(model, proc, folder, case, golden, stage_b_from_golden=bool(exempt))
    cmp = compare(runs, golden, inter, exempt)
    assert not cmp.failures_exact(), cmp.failures_exact()

    if "preprocess_stage_b" in golden:  # PixelQA: memory prompt and refer grid built from stage A
        stage_b = golden["preprocess_stage_b"]
        assert runs[1].prompt_text == stage_b["prompt"]
        assert runs[1].refer_grid == stage_b["refer_mask_grid"]
    elif "refer_mask_grid" in golden.get("preprocess", {}):
        assert runs[0].refer_grid == golden["preprocess"]["refer_mask_grid"]

    for name, (mx, _mean) in cmp.diffs.items():
        kind = name.split(".", 1)[1]
        kind = kind.split("_", 1)[1] if kind.startswith("obj") else kind
        tol = FP32_TOL.get(kind, 1e-3) if dtype == "fp32" else BF16_TOL.get(kind)
        if tol is not None:
            assert mx <= tol, f"{name}: max abs diff {mx} > {tol}"

    ious = cmp.frame_ious
    if ious:
        assert min(ious.values()) >= 0.98, sorted(ious.items(), key=lambda kv: kv[1])[:3]
        assert np.mean(list(ious.values())) >= 0.99
