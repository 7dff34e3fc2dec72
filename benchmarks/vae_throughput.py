"""TextVAE training throughput and model FLOP utilisation, measured side by side.

Prints training tokens/s of the VAE train step (the `cpu` preset unless told otherwise) and
the ratio of its achieved FLOP/s (model FLOPs counted analytically) to the FLOP/s of a large
float32 matmul measured in the same run on the same device, so the number says how close
the step is to what this machine can do, whatever else is running on it.

    .venv/bin/python benchmarks/vae_throughput.py [--preset cpu] [--steps 20] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from ldlm.config import load_experiment
from ldlm.flops import forward_flops, matmul_flops_per_s
from ldlm.mesh import make_mesh
from ldlm.train.loop import Task, init_training
from ldlm.models.vae import build_vae
from ldlm.train.vae import vae_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--exp", default="bbc_news")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    cfg = load_experiment(args.exp, args.preset, args.overrides)
    mesh = make_mesh(cfg.mesh)
    B, L = cfg.data.batch_size, cfg.data.block_len
    rng = np.random.default_rng(0)
    batch = {"tokens": jnp.asarray(rng.integers(4, args.vocab, (B, L)), jnp.int32),
             "mask": jnp.ones((B, L), bool)}

    def loss_fn(model, b, key, step, train, *, counts):
        return vae_loss(model, b, key, step, train, counts=counts, cfg=cfg.vae,
                        total_steps=1000)

    task = Task("vae", cfg.vae_train, build_vae(cfg, args.vocab), loss_fn, train_batches=None)
    _, state, step = init_training(task, mesh)
    for _ in range(3):  # compile and warm up
        state, m = step(state, batch)
    jax.block_until_ready(m)

    peak_before = matmul_flops_per_s()
    t = time.perf_counter()
    for _ in range(args.steps):
        state, m = step(state, batch)
    jax.block_until_ready(m)
    seconds = (time.perf_counter() - t) / args.steps
    peak_after = matmul_flops_per_s()
    peak = (peak_before + peak_after) / 2

    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    model_flops = 3 * forward_flops("vae", cfg, args.vocab, B)  # forward + backward
    achieved = model_flops / seconds
    print(f"device: {jax.devices()[0].device_kind} x{len(jax.devices())}, mesh {dict(mesh.shape)}")
    print(f"VAE preset {args.preset}: {n_params / 1e6:.2f}M parameters, batch {B} x L {L}, "
          f"{cfg.vae_train.compute_dtype}")
    print(f"train step: {seconds * 1e3:.1f} ms, {B * L / seconds:,.0f} tokens/s")
    print(f"model FLOPs/step: {model_flops / 1e9:.2f} GFLOP -> {achieved / 1e9:.1f} GFLOP/s")
    print(f"large matmul (2048^3, float32): {peak / 1e9:.1f} GFLOP/s "
          f"(before {peak_before / 1e9:.1f}, after {peak_after / 1e9:.1f})")
    print(f"ratio achieved / matmul: {achieved / peak:.3f}")


if __name__ == "__main__":
    main()
