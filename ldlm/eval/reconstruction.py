"""TextVAE evaluation: reconstruction of validation blocks, clean and with latent noise.

Noise levels sigma are relative to the per-coordinate standard deviation of the latent means
(measured on training blocks), which is also what the diffusion stage normalises by:
z = mean + sigma * std_D * eps. Reported per level: token accuracy on real tokens and the
exact-block-match rate (every real token right and the block's end found).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from ldlm.config import Config
from ldlm.data import batches as batches_lib
from ldlm.data.batches import real_rows
from ldlm.data.latents import LatentNormaliser
from ldlm.inference.textvae import Codec
from ldlm.mesh import to_host

log = logging.getLogger("ldlm.vae")
SIGMAS = (0.0, 0.1, 0.2, 0.5)
# blocks per batch of the statistics pass over the training split (inference only)
STATS_BATCH = 256


def fit_normaliser(codec: Codec, batches) -> LatentNormaliser:
    """Per-coordinate mean and std (over blocks and latent positions) of the posterior means
    of every real row of `batches`."""
    total, total_sq, count = 0.0, 0.0, 0.0
    for batch in batches:
        mean = to_host(codec.encode(batch["tokens"])).astype(np.float64)
        m = mean[to_host(real_rows(batch))].reshape(-1, mean.shape[-1])
        total, total_sq, count = total + m.sum(0), total_sq + (m ** 2).sum(0), count + m.shape[0]
    return LatentNormaliser.from_moments(total, total_sq, count)


def reconstruction_table(codec: Codec, batches, std_D, sigmas=SIGMAS, seed: int = 0,
                         keep_examples: int = 0):
    """{sigma: {token_accuracy, exact_match, blocks}} over all real rows of `batches`,
    plus the first blocks of up to `keep_examples` documents as
    (tokens, mask, {sigma: (pred, real)}) for display."""
    counts = {s: np.zeros(4) for s in sigmas}  # correct tokens, tokens, exact blocks, blocks
    examples = []
    key = jax.random.PRNGKey(seed)
    std = jnp.asarray(std_D)[None, None, :]
    for i, batch in enumerate(batches):
        tokens, mask = to_host(batch["tokens"]), to_host(batch["mask"])
        rows = to_host(real_rows(batch))
        mean = codec.encode(batch["tokens"])
        eps = jax.random.normal(jax.random.fold_in(key, i), mean.shape)
        preds = {}
        for s in sigmas:
            pred, real = map(to_host, codec.decode(mean + s * std * eps))
            preds[s] = (pred, real)
            right = (pred == tokens) & mask
            exact = (right.sum(-1) == mask.sum(-1)) & (real == mask).all(-1)
            counts[s] += (right[rows].sum(), mask[rows].sum(), exact[rows].sum(), rows.sum())
        # examples: the first block of each document, so that they are different texts
        starts = rows & (to_host(batch["block_index"]) == 0)
        for r in np.flatnonzero(starts)[:max(0, keep_examples - len(examples))]:
            examples.append((tokens[r], mask[r], {s: (p[r], m[r]) for s, (p, m) in
                                                  preds.items()}))
    table = {str(s): {"token_accuracy": c[0] / max(c[1], 1), "exact_match": c[2] / max(c[3], 1),
                      "blocks": int(c[3])} for s, c in counts.items()}
    return table, examples


def _text(tokenizer, tokens, real):
    return tokenizer.decode(np.asarray(tokens)[np.asarray(real, bool)])


def evaluate_vae(cfg: Config, run_dir, model, mesh, tokenizer,
                 num_examples: int = 3) -> tuple[dict, LatentNormaliser]:
    """The latent statistics of the whole training split (what the diffusion stage
    normalises by), and a report: the reconstruction table on the whole validation split
    with noise relative to those statistics, example reconstructions, interpolations."""
    codec = Codec(model)
    batch = STATS_BATCH - STATS_BATCH % cfg.data.batch_size or cfg.data.batch_size
    normaliser = fit_normaliser(codec, batches_lib.eval_batches(
        cfg, run_dir, mesh, role="train", batch_size=batch))
    std_D = normaliser.std_D
    table, examples = reconstruction_table(
        codec, batches_lib.eval_batches(cfg, run_dir, mesh), std_D,
        keep_examples=num_examples + 1, seed=cfg.seed)
    shown = []
    for tokens, mask, preds in examples[:num_examples]:
        shown.append({"original": _text(tokenizer, tokens, mask),
                      **{f"sigma_{s}": _text(tokenizer, *preds[s]) for s in (0.0, 0.5)}})
    report = {
        "block_len": cfg.data.block_len, "num_latents": cfg.vae.num_latents,
        "latent_dim": cfg.vae.latent_dim,
        "compression": cfg.data.block_len // cfg.vae.num_latents,
        "validation": table,
        "latent_std_mean": float(std_D.mean()), "latent_std_min": float(std_D.min()),
        "examples": shown,
        "interpolation": interpolation_examples(codec, tokenizer, examples, num_examples),
    }
    return report, normaliser


def interpolation_examples(codec: Codec, tokenizer, examples, first: int) -> list:
    """Decoded points on the line between the latents of two documents' first blocks."""
    if len(examples) < 2:
        return []
    (a, am, _), (b, bm, _) = examples[0], examples[-1]
    tokens = jnp.asarray(np.stack([a * am, b * bm]))
    za, zb = np.asarray(codec.encode(tokens))
    out = []
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        pred, real = map(np.asarray, codec.decode(jnp.asarray(((1 - t) * za + t * zb)[None])))
        out.append({"t": t, "text": _text(tokenizer, pred[0], real[0])})
    return out


def log_report(report: dict) -> None:
    log.info("reconstruction on %d validation blocks (L=%d, N=%d, d=%d, %dx compression):",
             report["validation"]["0.0"]["blocks"], report["block_len"], report["num_latents"],
             report["latent_dim"], report["compression"])
    for s, row in report["validation"].items():
        log.info("  latent noise sigma %-4s token accuracy %6.2f%%  exact blocks %6.2f%%", s,
                 100 * row["token_accuracy"], 100 * row["exact_match"])
    for ex in report["examples"]:
        log.info("  original: %r", ex["original"])
        log.info("  decoded:  %r", ex["sigma_0.0"])
        log.info("  sigma 0.5: %r", ex["sigma_0.5"])
    for p in report["interpolation"]:
        log.info("  midpoint t=%.2f: %r", p["t"], p["text"])
