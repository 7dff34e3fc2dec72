"""grain pipeline: determinism, exact resume, process sharding, global batches on a mesh."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ldlm.config import MeshConfig
from ldlm.data import batches as pipeline
from ldlm.errors import ConfigError
from ldlm.mesh import make_mesh, mesh_shape


def _rows(batch):
    """Block identity (doc_index, block_index) of each row."""
    return [tuple(map(int, r)) for r in zip(batch["doc_index"], batch["block_index"])]


def test_same_seed_same_batches_and_other_seed_differs(tiny_run):
    run_dir, _ = tiny_run
    src = pipeline.block_source(run_dir, "train")
    take = lambda seed: [_rows(b) for _, b in zip(range(5), pipeline.make_dataset(
        src, batch_size=8, train=True, seed=seed))]
    assert take(0) == take(0)
    assert take(0) != take(1)


def test_iterator_state_resumes_at_exactly_the_next_batch(tiny_run):
    run_dir, _ = tiny_run
    src = pipeline.block_source(run_dir, "train")
    n = len(src)
    # a batch size that does not divide the split, and enough steps to cross epochs
    ds = pipeline.make_dataset(src, batch_size=n // 3 + 1, train=True, seed=0)
    it = iter(ds)
    for _ in range(2):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]  # crosses into epochs 2 and 3
    resumed = iter(pipeline.make_dataset(src, batch_size=n // 3 + 1, train=True, seed=0))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_each_epoch_is_a_permutation(tiny_run):
    run_dir, _ = tiny_run
    src = pipeline.block_source(run_dir, "train")
    n = len(src)
    it = iter(pipeline.make_dataset(src, batch_size=1, train=True, seed=0))
    first = [_rows(next(it))[0] for _ in range(n)]
    second = [_rows(next(it))[0] for _ in range(n)]
    assert len(set(first)) == n and set(first) == set(second) and first != second


def test_processes_read_their_rows_of_the_single_process_global_batch(tiny_run):
    run_dir, _ = tiny_run
    src = pipeline.block_source(run_dir, "train")
    single = iter(pipeline.make_dataset(src, batch_size=8, train=True, seed=3))
    parts = [iter(pipeline.make_dataset(src, batch_size=8, train=True, seed=3,
                                        process_index=p, process_count=2)) for p in range(2)]
    for _ in range(10):
        whole = _rows(next(single))
        local = [_rows(next(p)) for p in parts]
        assert all(len(x) == 4 for x in local)
        assert local[0] + local[1] == whole  # same rows, same order


def test_eval_pass_covers_every_block_once_then_padding(tiny_run):
    run_dir, _ = tiny_run
    src = pipeline.block_source(run_dir, "validation")
    n = len(src)
    rows, padding = [], 0
    for p in range(2):  # two processes yield the same number of batches
        batches = list(pipeline.make_dataset(src, batch_size=64, train=False,
                                             process_index=p, process_count=2))
        assert len(batches) == -(-n // 64)
        for b in batches:
            real = b["doc_index"] >= 0
            assert not b["mask"][~real].any()  # padding rows carry no tokens
            padding += int((~real).sum())
            rows += [r for r, keep in zip(_rows(b), real) if keep]
    assert len(rows) == len(set(rows)) == n
    assert padding == -(-n // 64) * 64 - n


@pytest.mark.parametrize("axes", [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)])
def test_global_batches_sharded_over_the_mesh(tiny_run, tiny_cfg, axes):
    run_dir, stats = tiny_run
    mesh = make_mesh(MeshConfig(*axes))
    assert mesh.devices.shape == axes and len(jax.devices()) == 8
    cfg = tiny_cfg.override(["data.batch_size=16"])
    it = pipeline.train_batches(cfg, run_dir, mesh)
    batch = next(it)
    L = stats["block_len"]
    assert batch["tokens"].shape == (16, L) and batch["mask"].shape == (16, L)
    assert batch["label"].shape == (16,) and batch["tokens"].dtype == np.int32
    for v in batch.values():
        assert v.sharding.spec == P(("data", "fsdp"))
    # each device holds 16 / (data * fsdp) rows, replicated over the tensor axis
    rows = 16 // (axes[0] * axes[1])
    shards = batch["tokens"].addressable_shards
    assert len(shards) == 8 and all(s.data.shape == (rows, L) for s in shards)
    # the global array equals the batch the pipeline produced on one host
    local = next(iter(pipeline.make_dataset(pipeline.block_source(run_dir, "train"),
                                            batch_size=16, train=True, seed=0)))
    np.testing.assert_array_equal(np.asarray(batch["tokens"]), local["tokens"])
    # a jitted reduction over the sharded batch works
    assert int(jax.jit(lambda m: m.sum())(batch["mask"])) == int(local["mask"].sum())


def test_batch_size_must_divide_the_batch_shards(tiny_run, tiny_cfg):
    run_dir, _ = tiny_run
    mesh = make_mesh(MeshConfig(8, 1, 1))
    with pytest.raises(ConfigError, match="data.batch_size=12 is not divisible by the 8"):
        pipeline.train_batches(tiny_cfg.override(["data.batch_size=12"]), run_dir, mesh)


def test_mesh_shapes():
    assert mesh_shape(MeshConfig(-1, 2, 1), 8) == (4, 2, 1)
    assert mesh_shape(MeshConfig(2, -1, 2), 8) == (2, 2, 2)
    with pytest.raises(ConfigError, match="need 4 devices, but 8"):
        mesh_shape(MeshConfig(2, 2, 1), 8)
    with pytest.raises(ConfigError, match="do not divide"):
        mesh_shape(MeshConfig(-1, 3, 1), 8)


def test_missing_blocks_name_the_make_target(tmp_path):
    from ldlm.errors import MissingStageError
    with pytest.raises(MissingStageError, match="make tokenizer"):
        pipeline.block_source(tmp_path, "train")
