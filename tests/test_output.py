import numpy as np
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from unipixel_cli.output import ResultsWriter, Shard, read_results, rle_decode, rle_encode, run_metadata, written_ids


def test_rle_round_trip_matches_pycocotools():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.6
    rle = rle_encode(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [37, 53]
    assert np.array_equal(rle_decode(rle), mask)
    coco = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle["counts"] == coco["counts"].decode()
    assert np.array_equal(mask_utils.decode({"size": rle["size"], "counts": rle["counts"]}), mask)


def test_shards_partition_ids_and_never_move_when_rows_are_appended():
    ids = [f"v{i}" for i in range(200)]
    shards = [Shard(i, 3) for i in range(3)]
    owners = {x: [s.index for s in shards if s.owns(x)] for x in ids}
    assert all(len(o) == 1 for o in owners.values())
    assert all(len([x for x in ids if s.owns(x)]) > 30 for s in shards)
    more = ids + [f"new{i}" for i in range(50)]
    assert all([s.index for s in shards if s.owns(x)] == owners[x] for x in more[:200])


def test_writer_parts_resume_and_metadata(tmp_path):
    w = ResultsWriter(tmp_path, metadata={"model": "m"}, flush_rows=2)
    for i in range(5):
        w.write({"id": f"r{i}", "task": "segment", "status": "ok", "objects": [
            {"object_id": 0, "source": "seg", "score": 0.5, "masks": [rle_encode(np.eye(4, dtype=bool))]}]})
    w.close()
    parts = sorted(tmp_path.glob("part-*.parquet"))
    assert len(parts) == 3 and not list(tmp_path.glob(".tmp-*"))
    assert written_ids(tmp_path) == {f"r{i}" for i in range(5)}
    assert run_metadata(tmp_path) == {"model": "m"}
    df = read_results(tmp_path, decode_masks=True)
    assert len(df) == 5 and np.array_equal(df["mask_arrays"][0][0][0], np.eye(4, dtype=bool))
    assert pq.read_schema(parts[0]).field("objects").type.value_type.field("masks") is not None
