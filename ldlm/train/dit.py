"""Stage 2 (`make dit`): train the latent DiT on the cached, normalised VAE latents.

Objective: the squared error of the network output against its target (eps, x0 or v) at a
random time, optionally min-SNR weighted, plus (`dit.token_loss_weight`) the token
cross-entropy of the frozen VAE decoder on the DiT's clean estimate, weighted by alpha_t^2 so
that it speaks where the estimate can know the tokens (the squared error alone rewards a
blurred average of the plausible latents; the token term asks the estimate to decode to the
block's words). Validation always reports the estimate's token accuracy. In training, the
class label is replaced by the null label with probability `label_dropout` (classifier-free
guidance), each neighbouring block is dropped with probability `context_dropout` (one
model for unconditional generation, continuation and infilling), and with probability `self_cond_prob` the network first
estimates the clean latents and sees that estimate (without gradient) on its second pass.

Decoded samples at a few step budgets are written to `dit/samples/step_<n>.json` every
`dit.sample_every` steps and at the end.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from ldlm import rundir
from ldlm.config import Config, DiTConfig
from ldlm.data import latents as latents_lib
from ldlm.diffusion import samplers, schedules
from ldlm.errors import ConfigError
from ldlm.mesh import make_mesh, to_host
from ldlm.models.dit import DiT
from ldlm.train.loop import Task, TrainResult, train
from ldlm.train.vae import compute_dtype

log = logging.getLogger("ldlm.dit")
STAGE = "dit"
RESULT_FILE = "result.json"
ARCHITECTURE = ("width", "heads", "mlp_dim", "layers", "use_context", "context_pool")


def conditioning(batch, model: DiT, cfg: DiTConfig, rng, train: bool) -> dict:
    """The DiT's keyword inputs from a latent batch, with training-time dropout."""
    k_label, k_prev, k_next = jax.random.split(rng, 3)
    B = batch["label"].shape[0]
    label = batch["label"]
    drop = label < 0  # unlabelled rows are always unconditional
    if train:
        drop = drop | jax.random.bernoulli(k_label, cfg.label_dropout, (B,))
    label = jnp.where(drop, model.null_label, label)
    has_prev = batch["has_prev"] & cfg.use_context
    has_next = batch["has_next"] & cfg.use_context
    if train:
        has_prev = has_prev & ~jax.random.bernoulli(k_prev, cfg.context_dropout, (B,))
        has_next = has_next & ~jax.random.bernoulli(k_next, cfg.context_dropout, (B,))
    return {"label_B": label, "prev_BxNxD": batch["prev"], "has_prev_B": has_prev,
            "next_BxNxD": batch["next"], "has_next_B": has_next}


def decoder_token_scores(decode, z_BxNxD, tokens_BxL, mask_BxL):
    """Per-example token cross-entropy and accuracy (over real tokens) of decoding the
    un-normalised latents z with `decode(z) -> (logits_BxLxV, real_BxL)`."""
    logits, _ = decode(z_BxNxD)
    maskf = mask_BxL.astype(jnp.float32)
    n_B = jnp.maximum(maskf.sum(-1), 1.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BxL)
    hit = (jnp.argmax(logits, -1) == tokens_BxL).astype(jnp.float32)
    return (ce * maskf).sum(-1) / n_B, (hit * maskf).sum(-1) / n_B


def dit_loss(model: DiT, batch, rng, step, train: bool, *, cfg: DiTConfig, block_len: int,
             decoder_graphdef=None, fixed=None):
    """Diffusion loss of one batch; with `fixed` ({"vae": decoder params, "mean", "std": the
    latent statistics}) and `decoder_graphdef`, also the decoder's token scores of the clean
    estimate (in the loss when `cfg.token_loss_weight` > 0 in training, always reported in
    evaluation)."""
    x0 = batch["z"]
    B = x0.shape[0]
    rows = (batch["doc_index"] >= 0).astype(jnp.float32)  # eval passes end in padding rows
    k_t, k_eps, k_cond, k_sc, k_sc_use = jax.random.split(rng, 5)
    # validation always draws t uniformly, so runs with other time samplings compare
    t = schedules.sample_t(k_t, (B,), cfg.time_sampling if train else "uniform")
    ls = schedules.logsnr(t, cfg.schedule, cfg.snr_scale)
    a, s = schedules.alpha_sigma(ls)
    eps = jax.random.normal(k_eps, x0.shape)
    z = schedules.q_sample(x0, eps, a, s)
    cond = conditioning(batch, model, cfg, k_cond, train)
    self_cond = None
    if train and cfg.self_cond_prob > 0:
        first = model(z, t, **cond)
        estimate = jax.lax.stop_gradient(schedules.to_x0(cfg.prediction, first, z, a, s))
        use = jax.random.bernoulli(k_sc_use, cfg.self_cond_prob, (B,))
        self_cond = estimate * use[:, None, None].astype(estimate.dtype)
    out = model(z, t, self_cond_BxNxD=self_cond, **cond)
    tgt = schedules.target(cfg.prediction, x0, eps, a, s)
    w = schedules.loss_weight(cfg.loss_weighting, ls, cfg.prediction, cfg.min_snr_gamma)
    per_example = jnp.mean((out - tgt) ** 2, axis=(1, 2))
    n = jnp.maximum(rows.sum(), 1.0)
    loss = (w * per_example * rows).sum() / n
    x0_hat = schedules.to_x0(cfg.prediction, out, z, a, s)
    mse_x0 = (jnp.mean((x0_hat - x0) ** 2, axis=(1, 2)) * rows).sum() / n
    metrics = {"mse": (per_example * rows).sum() / n, "mse_x0": mse_x0,
               "tokens": rows.sum() * block_len}
    if fixed is not None and (cfg.token_loss_weight > 0 or not train):
        vae = nnx.merge(decoder_graphdef, fixed["vae"])
        x0_hat_vae = x0_hat * fixed["std"][None, None] + fixed["mean"][None, None]
        ce_B, acc_B = decoder_token_scores(vae.decode, x0_hat_vae, batch["tokens"],
                                           batch["token_mask"])
        metrics["token_ce"] = (ce_B * rows).sum() / n
        metrics["token_accuracy"] = (acc_B * rows).sum() / n
        if train:
            loss = loss + cfg.token_loss_weight * (a * a * ce_B * rows).sum() / n
    return loss, metrics


def build_dit(cfg: Config, num_latents: int, latent_dim: int, num_classes: int):
    dtype = compute_dtype(cfg.dit_train.compute_dtype)
    return lambda rngs: DiT(cfg.dit, num_latents, latent_dim, num_classes, rngs=rngs,
                            dtype=dtype, remat=cfg.dit_train.remat)


def sample_latents(model: DiT, cfg: DiTConfig, n: int, steps: int, seed: int,
                   labels=None, eta: float = 0.0):
    """n normalised latent blocks by DDIM (class-conditional when `labels` is given)."""
    key = jax.random.PRNGKey(seed)
    z_T = jax.random.normal(key, (n, model.N, model.D))
    label = (jnp.full((n,), model.null_label, jnp.int32) if labels is None
             else jnp.asarray(labels, jnp.int32))

    def net(z, t, sc):
        return model(z, t, self_cond_BxNxD=sc, label_B=label)

    return samplers.ddim(net, z_T, steps, jax.random.fold_in(key, 1), schedule=cfg.schedule,
                         snr_scale=cfg.snr_scale, prediction=cfg.prediction, eta=eta)


def sample_dump_hook(cfg: Config, run_dir, label_names, vae, per_label: int = 1):
    """Writes decoded class-conditional samples (DDIM, EMA weights) at each budget of
    dit.sample_steps, through the same pipeline that `make sample` uses (`vae`: the run's
    TextVAE)."""
    from ldlm.pipeline import LatentDiffusionPipeline

    mean, std = latents_lib.read_stats(run_dir)
    budgets = [int(x) for x in cfg.dit.sample_steps.split(",") if x.strip()]
    labels = [name for name in label_names for _ in range(per_label)] or None
    n = len(labels) if labels else per_label
    out_dir = rundir.stage_dir(run_dir, STAGE) / "samples"

    def hook(step: int, graphdef, params):
        params = jax.tree.map(to_host, params)  # sample on the host's default device
        pipe = LatentDiffusionPipeline(cfg, nnx.merge(graphdef, params), vae, mean, std,
                                       label_names)
        result = {str(b): [{"label": label, "text": text} for label, text in zip(
            labels or [None] * n,
            pipe.generate(n=n, steps=b, sampler="ddim", label=labels, seed=cfg.seed))]
            for b in budgets}
        if rundir.is_main_process():
            out_dir.mkdir(parents=True, exist_ok=True)
            rundir.write_json_atomic(out_dir / f"step_{step}.json", result)
        final = step == cfg.dit_train.steps
        for sample in result[str(budgets[-1])][:None if final else 1]:
            log.info("step %d sample (%d DDIM steps, %s): %r", step, budgets[-1],
                     sample["label"], sample["text"])

    return hook


def frozen_decoder(run_dir, mesh, vae=None):
    """(graphdef, fixed) for `dit_loss`: the run's VAE (EMA weights; `vae`, a loaded
    TextVAE, or loaded here) and the latent statistics, replicated over `mesh`."""
    from ldlm.textvae import TextVAE

    vae = vae or TextVAE.from_run(run_dir)
    graphdef, params = nnx.split(vae.model)
    mean, std = latents_lib.read_stats(run_dir)
    replicated = NamedSharding(mesh, P())

    def place(x):
        x = to_host(x)
        return jax.make_array_from_callback(x.shape, replicated, lambda idx: x[idx])

    fixed = {"vae": jax.tree.map(place, params), "mean": place(mean), "std": place(std)}
    return graphdef, fixed


def dit_task(cfg: Config, run_dir, mesh, with_samples: bool = True) -> Task:
    meta = latents_lib.read_meta(run_dir)  # MissingStageError -> make latents
    N, D = meta["num_latents"], meta["latent_dim"]
    if cfg.dit.use_context and N % cfg.dit.context_pool:
        raise ConfigError(f"dit.context_pool={cfg.dit.context_pool} must divide the VAE's "
                          f"number of latents ({N})")
    label_names = meta["label_names"]
    from ldlm.textvae import TextVAE

    vae = TextVAE.from_run(run_dir)  # one load serves the token scores and the sample dumps
    decoder_graphdef, fixed = frozen_decoder(run_dir, mesh, vae)

    def loss_fn(model, batch, rng, step, train, fixed=None):
        return dit_loss(model, batch, rng, step, train, cfg=cfg.dit,
                        block_len=cfg.data.block_len, decoder_graphdef=decoder_graphdef,
                        fixed=fixed)

    return Task(
        stage=STAGE, train_cfg=cfg.dit_train,
        build_model=build_dit(cfg, N, D, max(1, len(label_names))), loss_fn=loss_fn,
        train_batches=latents_lib.latent_batches(cfg, run_dir, mesh),
        eval_batches=lambda: latents_lib.latent_batches(cfg, run_dir, mesh, "validation",
                                                        train=False),
        frozen={**{f"dit.{k}": getattr(cfg.dit, k) for k in ARCHITECTURE},
                "num_latents": N, "latent_dim": D, "num_classes": len(label_names)},
        hook=sample_dump_hook(cfg, run_dir, label_names, vae) if with_samples else None,
        hook_every=cfg.dit.sample_every, fixed=fixed)


def train_dit(cfg: Config, run_dir, with_samples: bool = True) -> TrainResult:
    mesh = make_mesh(cfg.mesh)
    task = dit_task(cfg, run_dir, mesh, with_samples)  # a missing input stage raises first
    rundir.start_stage(cfg, run_dir, STAGE)
    return train(cfg, run_dir, task, mesh)


def run_dit(cfg: Config, run_dir) -> dict:
    """`make dit`: train (or resume) the DiT, dump samples; writes and returns the training
    time and final validation loss (dit/result.json)."""
    result = train_dit(cfg, run_dir)
    from ldlm.metrics import read_metrics
    rows = [r for r in read_metrics(rundir.stage_dir(run_dir, STAGE))
            if r["split"] == "validation"]
    out = {"train_seconds": round(result.seconds, 1), "validation": rows[-1] if rows else {}}
    if rundir.is_main_process():  # written last: its presence means the stage finished
        rundir.write_json_atomic(rundir.stage_dir(run_dir, STAGE) / RESULT_FILE, out)
    return out
