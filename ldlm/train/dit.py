"""Training the latent prior (stage 2, `make dit`) on the cached, normalised VAE latents:
the kind that `dit.kind` names (ldlm/priors/) supplies the network, its batches and its
loss; this module adds the frozen VAE decoder (validation scores the prior's clean estimate
through it) and the sample-dump hook the stage wires up (ldlm/stages/dit.py).

The frozen VAE decoder comes from the run's vae stage (`ldlm.loading`), passed to the jitted
steps as an argument.
"""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

from ldlm import priors, rundir
from ldlm.config import Config
from ldlm.data import latents as latents_lib
from ldlm.data.batches import blocks_dir
from ldlm.data.blocks import read_meta as read_blocks_meta
from ldlm.loading import load_stage_model, stage_config
from ldlm.locks import stage_lock
from ldlm.mesh import make_mesh, replicate
from ldlm.models.vae import build_vae
from ldlm.train.loop import Task, TrainResult, train

STAGE = "dit"


def frozen_decoder(run_dir, mesh, vae_model=None):
    """(graphdef, frozen) for a prior's loss: the run's VAE (EMA weights; `vae_model` when
    the caller has loaded it already) and the latent statistics, replicated over `mesh`."""
    if vae_model is None:
        vae_cfg = stage_config(run_dir, "vae", "a trained VAE")
        vocab = read_blocks_meta(blocks_dir(run_dir))["vocab_size"]
        vae_model = load_stage_model(run_dir, "vae", build_vae(vae_cfg, vocab),
                                     vae_cfg.vae_train)
    graphdef, params = nnx.split(vae_model)
    normaliser = latents_lib.LatentNormaliser.load(run_dir)
    frozen = {"vae": jax.tree.map(lambda x: replicate(x, mesh), params),
              "mean": replicate(normaliser.mean_D, mesh),
              "std": replicate(normaliser.std_D, mesh)}
    return graphdef, frozen


def dit_task(cfg: Config, run_dir, mesh, hook: Callable | None = None,
             vae_model=None) -> Task:
    """The prior's training task; `hook(step, graphdef, params)` runs every
    `dit.sample_every` steps and at the end (the stage's sample dumps); `vae_model`: the
    run's VAE if the caller has loaded it (else loaded here)."""
    kind = priors.get(priors.check(cfg))
    meta = latents_lib.read_meta(run_dir)  # MissingStageError -> make latents
    N, D = meta["num_latents"], meta["latent_dim"]
    label_names = meta["label_names"]
    decoder_graphdef, frozen = frozen_decoder(run_dir, mesh, vae_model)
    vocab = read_blocks_meta(blocks_dir(run_dir))["vocab_size"]

    def loss_fn(model, batch, rng, step, train, *, counts, frozen=None):
        return kind.loss(model, batch, rng, step, train, counts=counts, cfg=cfg.dit,
                         decoder_graphdef=decoder_graphdef, frozen=frozen)

    return Task(
        stage=STAGE, train_cfg=cfg.dit_train,
        build_model=kind.build(cfg, N, D, max(1, len(label_names)), vocab_size=vocab),
        loss_fn=loss_fn,
        train_batches=kind.batches(cfg, run_dir, mesh),
        eval_batches=lambda: kind.batches(cfg, run_dir, mesh, "validation", train=False),
        must_match={**kind.must_match(cfg), "num_latents": N, "latent_dim": D,
                    "num_classes": len(label_names)},
        hook=hook, hook_every=cfg.dit.sample_every, frozen=frozen)


def train_dit(cfg: Config, run_dir, hook: Callable | None = None,
              vae_model=None) -> TrainResult:
    mesh = make_mesh(cfg.mesh)
    task = dit_task(cfg, run_dir, mesh, hook, vae_model)  # a missing input raises first
    with stage_lock(rundir.stage_dir(run_dir, STAGE)):  # before anything is written
        return train(cfg, run_dir, task, mesh)
