"""Latent windows of one document (the block-causal prior's training examples)."""

import numpy as np
import pytest

from ldlm.data import batches
from ldlm.data.latents import LatentSource, LatentWindowSource
from ldlm.errors import ConfigError


def test_a_window_is_consecutive_blocks_of_one_document(tiny_dit):
    _, run_dir, _ = tiny_dit
    blocks = LatentSource(run_dir, "validation")
    windows = LatentWindowSource(run_dir, "validation", blocks=3)
    N = blocks.N
    assert len(windows) == len(blocks)
    ends = 0
    for i in range(len(windows)):
        w = windows[i]
        assert w["z"].shape == (3 * N, blocks.D) and w["mask"].shape == (3, blocks[0]["mask"].size)
        assert (w["doc_index"], w["block_index"]) == (blocks[i]["doc_index"],
                                                     blocks[i]["block_index"])
        for k in range(3):
            j = i + k
            same_doc = j < len(blocks) and blocks[j]["doc_index"] == w["doc_index"] and \
                blocks[j]["block_index"] == w["block_index"] + k
            assert w["latent_mask"][k * N:(k + 1) * N].all() == same_doc
            if same_doc:
                np.testing.assert_array_equal(w["z"][k * N:(k + 1) * N], blocks[j]["z"])
                np.testing.assert_array_equal(w["tokens"][k], blocks[j]["tokens"])
            else:
                assert not w["mask"][k].any() and not w["z"][k * N:(k + 1) * N].any()
                ends += 1
    assert ends > 0  # some windows run past their document's end, and stop there


def test_windows_batch_and_padding_rows_are_told_apart(tiny_dit):
    _, run_dir, _ = tiny_dit
    windows = LatentWindowSource(run_dir, "validation", blocks=2)
    ds = batches.make_dataset(windows, batch_size=64, train=False, process_index=0,
                              process_count=1)
    rows = sum(int(batches.real_rows(b).sum()) for b in ds)
    assert rows == len(windows)


def test_an_empty_window_is_an_error(tiny_dit):
    _, run_dir, _ = tiny_dit
    with pytest.raises(ConfigError, match="at least one VAE block"):
        LatentWindowSource(run_dir, "validation", blocks=0)


def test_the_two_stream_mask_is_block_causal():
    from ldlm.priors.block_causal.model import two_stream_mask
    W, G = 8, 2
    mask = two_stream_mask(W, G)
    for q in range(2 * W):
        for k in range(2 * W):
            qb, kb = (q % W) // G, (k % W) // G
            q_noisy, k_noisy = q >= W, k >= W
            if not q_noisy:
                want = not k_noisy and kb <= qb  # clean: the committed history, itself incl.
            else:
                want = (not k_noisy and kb < qb) or (k_noisy and kb == qb)
            assert mask[q, k] == want, (q, k)
    with pytest.raises(ConfigError, match="dit.block_size=3 must divide the window of 8"):
        two_stream_mask(8, 3)
