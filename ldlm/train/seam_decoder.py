"""Training the seam decoder (`make decoder`, after `make latents`): the VAE's decoder,
fine-tuned on windows of two consecutive VAE blocks of the latent cache to decode the second
block given the first block's history as well (ldlm/models/seam_decoder.py).

Each window trains both of the decoder's streams: block 0 is decoded alone (a document's
first block has no history, and a window starts at every block), block 1 given block 0's
history. Token cross-entropy on real tokens and the real-token classification as in the VAE
(ldlm/train/vae.py); both blocks' latents get Gaussian noise of a random level, so the
decoder keeps surviving the prior's imperfect latents. The encoder is not trained: the
latent cache, and every prior trained on it, stay valid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ldlm import rundir
from ldlm.config import Config
from ldlm.data import latents as latents_lib
from ldlm.data.batches import blocks_dir
from ldlm.data.blocks import read_meta as read_blocks_meta
from ldlm.errors import ConfigError
from ldlm.loading import load_stage_model, stage_config
from ldlm.locks import stage_lock
from ldlm.mesh import make_mesh, replicate, to_host
from ldlm.models.seam_decoder import SeamDecoder, build_seam_decoder, load_vae_decoder
from ldlm.models.vae import build_vae
from ldlm.train.loop import Task, TrainResult, train

STAGE = "decoder"
ARCHITECTURE = ("width", "heads", "mlp_dim", "decoder_layers", "num_latents", "latent_dim")


def noisy_latents(z_BxKxNxD, rng, noise_max: float):
    """z plus Gaussian noise of level sigma ~ U(0, noise_max), one level per block."""
    if noise_max <= 0:
        return z_BxKxNxD
    k_sigma, k_noise = jax.random.split(rng)
    B, K = z_BxKxNxD.shape[:2]
    sigma = jax.random.uniform(k_sigma, (B, K, 1, 1)) * noise_max
    return z_BxKxNxD + sigma * jax.random.normal(k_noise, z_BxKxNxD.shape)


def seam_decoder_loss(model: SeamDecoder, batch, rng, step, train: bool, *, counts: dict,
                      length_weight: float, noise_max: float, frozen):
    """Loss of a (micro-)batch of two-block windows, a sum over its rows divided by the
    global batch's `counts`; `frozen` holds the latent statistics (mean, std)."""
    tokens_BxKxL, mask_BxKxL = batch["tokens"], batch["mask"]
    B, K, L = tokens_BxKxL.shape
    normaliser = latents_lib.LatentNormaliser(frozen["mean"], frozen["std"])
    z = normaliser.denormalise(batch["z"]).reshape(B, K, -1, batch["z"].shape[-1])
    if train:
        z = noisy_latents(z, rng, noise_max)
    block_real_BxK = mask_BxKxL.any(-1)
    logits0, real0, history = model.alone(z[:, 0], valid_B=block_real_BxK[:, 0])
    logits1, real1 = model.decode(z[:, 1], history)
    logits = jnp.stack([logits0, logits1], axis=1)
    real_logits = jnp.stack([real0, real1], axis=1)

    maskf = mask_BxKxL.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BxKxL)
    recon = (ce * maskf).sum() / counts["tokens"]
    hits = (jnp.argmax(logits, -1) == tokens_BxKxL) * maskf
    # where each real block ends (as the VAE's length head), per window
    bce = optax.sigmoid_binary_cross_entropy(real_logits, maskf)
    length = (bce * block_real_BxK[..., None]).sum() / (counts["rows"] * L)
    loss = recon + length_weight * length
    return loss, {"recon": recon, "accuracy": hits.sum() / counts["tokens"],
                  "length_bce": length}


def _replicated_stats(run_dir, mesh) -> dict:
    """The latent statistics (mean, std), replicated over the mesh."""
    normaliser = latents_lib.LatentNormaliser.load(run_dir)
    return {"mean": replicate(normaliser.mean_D, mesh), "std": replicate(normaliser.std_D, mesh)}


def seam_decoder_task(cfg: Config, run_dir, mesh) -> Task:
    latents_lib.read_meta(run_dir)  # MissingStageError -> make latents
    vae_cfg = stage_config(run_dir, "vae", "a trained VAE")
    if vae_cfg.vae.kind != "block":
        raise ConfigError(f"the {vae_cfg.vae.kind} autoencoder of {run_dir} reads each latent "
                          "on its own: it has no block seams, so `make decoder` does not "
                          "apply (texts are read by its own decoder)")
    vocab = read_blocks_meta(blocks_dir(run_dir))["vocab_size"]
    vae_model = load_stage_model(run_dir, "vae", build_vae(vae_cfg, vocab), vae_cfg.vae_train)
    # host copies of the VAE's weights, placed on the mesh in `build`
    vae_params = jax.tree.map(to_host, nnx.state(vae_model, nnx.Param))
    # the VAE's shape and block length, this config's training settings
    shape_cfg = cfg.replace(vae=vae_cfg.vae, data=vae_cfg.data)
    build_fresh = build_seam_decoder(shape_cfg, vocab)

    def build(rngs):
        seam = build_fresh(rngs)
        load_vae_decoder(seam, vae_params)
        return seam

    def loss_fn(model, batch, rng, step, train, *, counts, frozen):
        return seam_decoder_loss(model, batch, rng, step, train, counts=counts,
                                 length_weight=vae_cfg.vae.length_weight,
                                 noise_max=cfg.decoder.latent_noise_max, frozen=frozen)

    return Task(
        stage=STAGE, train_cfg=cfg.decoder_train, build_model=build, loss_fn=loss_fn,
        train_batches=latents_lib.window_batches(cfg, run_dir, mesh, blocks=2),
        eval_batches=lambda: latents_lib.window_batches(cfg, run_dir, mesh, "validation",
                                                        train=False, blocks=2),
        must_match={**{f"vae.{k}": getattr(vae_cfg.vae, k) for k in ARCHITECTURE},
                    "data.block_len": vae_cfg.data.block_len, "vocab_size": vocab},
        frozen=_replicated_stats(run_dir, mesh))


def train_seam_decoder(cfg: Config, run_dir) -> TrainResult:
    mesh = make_mesh(cfg.mesh)
    task = seam_decoder_task(cfg, run_dir, mesh)  # a missing input stage raises first
    with stage_lock(rundir.stage_dir(run_dir, STAGE)):  # before anything is written
        return train(cfg, run_dir, task, mesh)
