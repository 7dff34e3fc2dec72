"""Model FLOP utilisation (MFU) of the VAE, DiT and AR training steps on a few mesh layouts.

Model FLOPs per step are counted analytically (matmuls only, 2 per multiply-add; training =
forward + backward = 3 forward, plus the DiT's self-conditioning forward with probability
`dit.self_cond_prob`, plus one forward when `remat` recomputes the blocks). The step time is
measured on synthetic batches. MFU = achieved FLOP/s / peak FLOP/s of all devices, where the
peak is the device's dense bf16 peak on known accelerators (--peak-tflops overrides) and, on
CPU, the FLOP/s of a large float32 matmul measured in the same run.

    .venv/bin/python benchmarks/mfu.py [--preset cpu] [--models vae,dit,ar]
        [--meshes 1,1,1] [--steps 10] [--set k=v ...]

The prior is the config's kind (the cpu preset: block_causal); the per-block DiT:
--set dit.kind=per_block --set dit.window=0 --set dit.block_size=0 (its "dit" row).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from ldlm import priors
from ldlm.config import Config, MeshConfig, load_experiment
from ldlm.flops import PEAK_BF16, matmul_flops_per_s, train_flops
from ldlm.mesh import batch_sharding, make_mesh, param_rules
from ldlm.models.ar import build_ar
from ldlm.train.ar import ar_loss
from ldlm.train.loop import Task, init_training
from ldlm.models.vae import build_vae
from ldlm.train.vae import vae_loss

def synthetic(model: str, cfg: Config, vocab: int, B: int) -> tuple[dict, object, object]:
    """(batch, build, loss_fn) for a model."""
    L, N, D = cfg.data.block_len, cfg.vae.num_latents, cfg.vae.latent_dim
    rng = np.random.default_rng(0)
    if model in ("vae", "ar"):
        batch = {"tokens": jnp.asarray(rng.integers(4, vocab, (B, L)), jnp.int32),
                 "mask": jnp.ones((B, L), bool)}
        if model == "ar":
            return batch, build_ar(cfg, vocab), ar_loss
        return batch, build_vae(cfg, vocab), lambda m, b, k, s, t, counts: vae_loss(
            m, b, k, s, t, counts=counts, cfg=cfg.vae, total_steps=1000)
    kind = priors.get(cfg)
    return kind.synthetic_batch(cfg, B, vocab), kind.build(cfg, N, D, 5, vocab_size=vocab), \
        lambda m, b, k, s, t, counts: kind.loss(m, b, k, s, t, counts=counts, cfg=cfg.dit)


def measure(model: str, cfg: Config, mesh_cfg: MeshConfig, vocab: int,
            steps: int) -> tuple[float, int]:
    """Seconds per training step and parameter count."""
    mesh = make_mesh(mesh_cfg)
    B = cfg.data.batch_size
    batch, build, loss_fn = synthetic(model, cfg, vocab, B)
    batch = jax.device_put(batch, batch_sharding(mesh))
    tcfg = getattr(cfg, f"{model}_train")
    task = Task(model, tcfg, build, loss_fn, train_batches=None)
    _, state, step = init_training(task, mesh, 0, param_rules(cfg.mesh.rules))
    with jax.set_mesh(mesh):
        for _ in range(3):
            state, m = step(state, batch)
        jax.block_until_ready(m)
        t = time.perf_counter()
        for _ in range(steps):
            state, m = step(state, batch)
        jax.block_until_ready(m)
    return (time.perf_counter() - t) / steps, sum(x.size for x in jax.tree.leaves(
        state.params))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--exp", default="bbc_news")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--models", default="vae,dit,ar")
    p.add_argument("--meshes", default="-1,1,1", help="data,fsdp,tensor;... e.g. 8,1,1;2,4,1")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="per-device peak (TFLOP/s); default: the table or a CPU matmul")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    cfg = load_experiment(args.exp, args.preset, args.overrides)
    devices = jax.devices()
    kind = devices[0].device_kind
    peak = args.peak_tflops * 1e12 or next(
        (v for k, v in PEAK_BF16.items() if kind.startswith(k)), 0.0)
    peak_source = "given" if args.peak_tflops else "bf16 dense peak" if peak else None
    if not peak:
        peak = matmul_flops_per_s()
        peak_source = "measured 2048^3 float32 matmul"
    print(f"device: {kind} x{len(devices)}; peak per device {peak / 1e12:.3f} TFLOP/s "
          f"({peak_source}); preset {args.preset}, batch {cfg.data.batch_size}")
    print(f"{'model':>5} {'mesh (d,f,t)':>13} {'dtype':>9} {'params':>8} {'ms/step':>9} "
          f"{'TFLOP/s':>8} {'MFU':>7}")
    for mesh_text in args.meshes.split(";"):
        sizes = [int(x) for x in mesh_text.split(",")]
        mesh_cfg = MeshConfig(*sizes, rules=cfg.mesh.rules)
        shape = make_mesh(mesh_cfg).devices.shape
        for model in args.models.split(","):
            seconds, n_params = measure(model, cfg, mesh_cfg, args.vocab, args.steps)
            B = cfg.data.batch_size
            flops = priors.get(cfg).train_flops(cfg, B) if model == "dit" else \
                train_flops(model, cfg, args.vocab, B)
            achieved = flops / seconds
            dtype = getattr(cfg, f"{model}_train").compute_dtype
            print(f"{model:>5} {str(tuple(shape)):>13} {dtype:>9} {n_params / 1e6:>7.2f}M "
                  f"{seconds * 1e3:>9.1f} {achieved / 1e12:>8.3f} "
                  f"{achieved / (peak * int(np.prod(shape))):>7.1%}")


if __name__ == "__main__":
    main()
