"""Does a block-causal prior use the previous VAE block? Validation v-loss of the second VAE
block of 256 full windows with the first block as clean history, against the same block
moved to a window's start (no history), at the same times and noise; also latent 0 against
latents 8-15 of the first block (how much the latents before them within the block help).

    .venv/bin/python benchmarks/history_use.py   # on runs/bc_g1 (dit.window=2, block_size=1)
"""
import jax, jax.numpy as jnp, numpy as np
from ldlm.data.latents import LatentWindowSource
from ldlm.inference.generation import LatentDiffusionPipeline
from ldlm.diffusion import schedules
from ldlm.priors.block_causal.objective import window_times
pipe = LatentDiffusionPipeline.from_pretrained("runs/bc_g1")
m = pipe.sampler.model; cfg = pipe.cfg.dit
src = LatentWindowSource("runs/bc_g1", "validation", 2)
idx = [i for i in range(len(src)) if src[i]["latent_mask"].all()][:256]
items = [src[i] for i in idx]
x0 = jnp.asarray(np.stack([it["z"] for it in items])); B, W, D = x0.shape
fwd = jax.jit(lambda x0, z, t, mask: m(x0, z, t, latent_mask_BxW=mask))
res = {}
for k in range(4):
    key = jax.random.PRNGKey(k)
    t = window_times(key, B, W, 1, cfg, train=False)  # uniform times
    a, s = schedules.alpha_sigma(schedules.logsnr(t, cfg.schedule, cfg.snr_scale))
    eps = jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
    z = schedules.q_sample(x0, eps, a, s)
    tgt = schedules.target(cfg.prediction, x0, eps, a, s)
    full = jnp.ones((B, W), bool)
    err = lambda out: np.asarray(jnp.mean((out - tgt) ** 2, -1))
    e_hist = err(fwd(x0, z, t, full))
    # the second VAE block without the first block as history: shift it to a window start
    x0b = jnp.concatenate([x0[:, 16:], jnp.zeros_like(x0[:, 16:])], 1)
    zb = jnp.concatenate([z[:, 16:], z[:, 16:]], 1); tb = jnp.concatenate([t[:, 16:], t[:, 16:]], 1)
    maskb = jnp.concatenate([jnp.ones((B, 16), bool), jnp.zeros((B, 16), bool)], 1)
    e_nohist = np.asarray(jnp.mean((fwd(x0b, zb, tb, maskb)[:, :16] - tgt[:, 16:]) ** 2, -1))
    for name, v in (("block0 (no history)", e_hist[:, :16]), ("block1 with block0 history", e_hist[:, 16:]), ("block1 alone", e_nohist)):
        res.setdefault(name, []).append(v.mean())
    # within block 0: latent j has j earlier latents of history
    res.setdefault("latent 0 of block0", []).append(e_hist[:, 0].mean())
    res.setdefault("latents 8-15 of block0", []).append(e_hist[:, 8:16].mean())
for k, v in res.items(): print(f"{k}: v-loss {np.mean(v):.4f}")
