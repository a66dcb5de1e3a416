"""The batched LLM stage: padded and length-grouped prefill agree with one request at a time."""

import json

import pytest
import torch

from unipixel_cli.engine import Engine, EngineOptions
from unipixel_cli.manifest import load_manifest
from unipixel_cli.model.unipixel import _length_groups

from .test_cli_segment import seg_cases


def test_length_groups_respect_the_padding_budget():
    assert _length_groups([5, 3, 5, 9, 4], 0) == [[1], [4], [0, 2], [3]]
    assert _length_groups([5, 3, 5, 9, 4], 2) == [[1, 4, 0, 2], [3]]
    assert _length_groups([7], 0) == [[0]]


@pytest.fixture(scope="module")
def requests_of_mixed_length(tmp_path_factory, conformance_dir, fixture_model):
    model, processor = fixture_model
    rows = [r for r, _, _ in seg_cases(conformance_dir)]
    # the same video with prompts of different lengths, and one prompt twice (equal lengths)
    rows += [{**rows[0], "id": "short", "prompt": "Segment the ball."},
             {**rows[0], "id": "again"}]
    manifest = tmp_path_factory.mktemp("llm") / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    mrows, errors = load_manifest(manifest, "segment")
    assert not errors
    engine = Engine(model, processor, EngineOptions())
    return [engine.prepare(r).request for r in mrows]


@pytest.mark.parametrize("max_pad", [0, 4, 1 << 30])
def test_prefill_grouping_matches_one_request_at_a_time(fixture_model, requests_of_mixed_length, max_pad):
    model, _ = fixture_model
    reqs = requests_of_mixed_length
    assert len({len(r.input_ids) for r in reqs}) < len(reqs) < 2 * len({len(r.input_ids) for r in reqs})
    alone = [model.run_llm([r], trace=True)[0] for r in reqs]
    with torch.inference_mode():
        embeds, positions = model.inject(reqs)
        traces = [{} for _ in reqs]
        state = model.prefill(reqs, embeds, positions, traces, max_pad=max_pad)
        batched = model.greedy_decode(reqs, state)
    for one, many, trace, req in zip(alone, batched, traces, reqs):
        assert many.generated_ids == one.generated_ids
        assert many.seg_hidden.shape == one.seg_hidden.shape
        torch.testing.assert_close(many.seg_hidden, one.seg_hidden, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(trace["prefill_hidden"], one.trace["prefill_hidden"], atol=1e-4, rtol=1e-4)
        assert trace["prefill_hidden"].shape[0] == len(req.input_ids)
