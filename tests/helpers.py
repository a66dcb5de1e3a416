"""Shared test helpers: run the CLI in a subprocess, compare result datasets."""

import os
import subprocess
import sys

import numpy as np

from unipixel_cli.output import rle_decode


def cli(*args, timeout=600, env=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "unipixel_cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def mask_iou(a: dict, b: dict) -> float:
    x, y = rle_decode(a), rle_decode(b)
    union = (x | y).sum()
    return 1.0 if union == 0 else (x & y).sum() / union


def assert_same_results(a, b, min_iou=0.99, score_atol=1e-4):
    """Two results DataFrames hold the same rows: ids, status, answers, masks and scores."""
    a, b = a.set_index("id").sort_index(), b.set_index("id").sort_index()
    assert list(a.index) == list(b.index)
    assert list(a["status"]) == list(b["status"]) and list(a["raw_answer"]) == list(b["raw_answer"])
    for oa, ob in zip(a["objects"], b["objects"]):
        assert len(oa) == len(ob)
        for x, y in zip(oa, ob):
            assert all(mask_iou(m1, m2) >= min_iou for m1, m2 in zip(x["masks"], y["masks"]))
    assert np.allclose([o["score"] for objs in a["objects"] for o in objs],
                       [o["score"] for objs in b["objects"] for o in objs], atol=score_atol)
