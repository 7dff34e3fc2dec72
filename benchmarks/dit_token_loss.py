"""What the DiT's token loss (`dit.token_loss_weight`) costs per training step.

The token loss decodes the DiT's clean estimate with the frozen VAE decoder and
back-propagates the decoder's token cross-entropy into the DiT, so every step runs the
decoder (its 8k-way output layer included) forward and backward. This times the DiT step
without and with it on synthetic batches and random weights, interleaved in one run so that
drift hits both, and prints the ratio.

    .venv/bin/python benchmarks/dit_token_loss.py [--preset cpu] [--weight 0.3] [--steps 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from ldlm import priors
from ldlm.config import MeshConfig, load_experiment
from ldlm.mesh import make_mesh, param_rules
from ldlm.priors.per_block import build_dit, dit_loss
from ldlm.train.loop import Task, build_model, init_training
from ldlm.models.vae import build_vae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--exp", default="bbc_news")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--weight", type=float, default=0.3)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    # the token loss is the per-block DiT's
    cfg = load_experiment(args.exp, args.preset, ["dit.kind=per_block", "dit.window=0",
                                                  "dit.block_size=0"])
    N, D, B = cfg.vae.num_latents, cfg.vae.latent_dim, cfg.data.batch_size
    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    batch = priors.get(cfg).synthetic_batch(cfg, B, args.vocab)
    vae = Task("vae", cfg.vae_train, build_vae(cfg, args.vocab), None, train_batches=None)
    vae_graphdef, vae_params = build_model(vae, mesh, 0)
    fixed = {"vae": vae_params, "mean": jnp.zeros(D), "std": jnp.ones(D)}

    runs = {}
    for weight in (0.0, args.weight):
        dcfg = dataclasses.replace(cfg.dit, token_loss_weight=weight)

        def loss_fn(m, b, k, s, t, counts, frozen=None, dcfg=dcfg):
            return dit_loss(m, b, k, s, t, counts=counts, cfg=dcfg,
                            decoder_graphdef=vae_graphdef, frozen=frozen)

        task = Task("dit", cfg.dit_train, build_dit(cfg, N, D, 5), loss_fn, train_batches=None)
        _, state, step = init_training(task, mesh, 0, param_rules(cfg.mesh.rules))
        runs[weight] = [step, state]

    times = {w: [] for w in runs}
    with jax.set_mesh(mesh):
        for w, run in runs.items():  # compile and warm up
            for _ in range(3):
                run[1], m = run[0](run[1], batch, fixed)
            jax.block_until_ready(m)
        for _ in range(args.repeats):
            for w, run in runs.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    run[1], m = run[0](run[1], batch, fixed)
                jax.block_until_ready(m)
                times[w].append((time.perf_counter() - start) / args.steps)
    base, with_loss = (float(np.median(times[w])) for w in runs)
    print(f"device: {jax.devices()[0].platform}; preset {args.preset}, batch {B}, "
          f"{N}x{D} latents, vocabulary {args.vocab}")
    print(f"DiT step: {base * 1e3:.0f} ms without the token loss, {with_loss * 1e3:.0f} ms with "
          f"dit.token_loss_weight={args.weight}; ratio {with_loss / base:.2f}")


if __name__ == "__main__":
    main()
