"""`make dit`: train (or resume) the latent DiT, with decoded sample dumps at a few step
budgets (`dit/samples/step_<n>.json`, every `dit.sample_every` steps and at the end), then
`dit/result.json` with the training time and final validation loss (written last)."""

from __future__ import annotations

import logging

import jax
from flax import nnx

from ldlm import rundir
from ldlm.config import Config
from ldlm.data import latents as latents_lib
from ldlm.inference.generation import LatentDiffusionPipeline
from ldlm.inference.textvae import TextVAE
from ldlm.locks import stage_lock
from ldlm.logs import write_result
from ldlm.mesh import to_host
from ldlm.train.dit import STAGE, train_dit

log = logging.getLogger("ldlm.dit")


def sample_dump_hook(cfg: Config, run_dir, vae: TextVAE, per_label: int = 1):
    """hook(step, graphdef, params) writing decoded class-conditional samples (DDIM, EMA
    weights) at each budget of dit.sample_steps, through the pipeline `make sample` uses
    (`vae`: the run's TextVAE)."""
    label_names = latents_lib.read_meta(run_dir)["label_names"]
    budgets = list(cfg.dit.sample_steps)
    labels = [name for name in label_names for _ in range(per_label)] or None
    n = len(labels) if labels else per_label
    out_dir = rundir.stage_dir(run_dir, STAGE) / "samples"

    def hook(step: int, graphdef, params):
        params = jax.tree.map(to_host, params)  # sample on the host's default device
        pipe = LatentDiffusionPipeline(cfg, nnx.merge(graphdef, params), vae, label_names)
        result = {str(b): [{"label": label, "text": text} for label, text in zip(
            labels or [None] * n,
            pipe.generate(n=n, steps=b, sampler="ddim", label=labels, seed=cfg.seed,
                          num_blocks=pipe.sampler.blocks_without_history))]
            for b in pipe.sampler.sample_budgets(budgets)}
        if rundir.is_main_process():
            out_dir.mkdir(parents=True, exist_ok=True)
            rundir.write_json_atomic(out_dir / f"step_{step}.json", result)
        final = step == cfg.dit_train.steps
        last = list(result)[-1]
        for sample in result[last][:None if final else 1]:
            log.info("step %d sample (%s steps, %s): %r", step, last, sample["label"],
                     sample["text"])

    return hook


def run_dit(cfg: Config, run_dir, with_samples: bool = True) -> dict:
    latents_lib.read_meta(run_dir)  # MissingStageError (make latents) before anything else
    vae = TextVAE.from_run(run_dir)  # one load serves the frozen decoder and the dumps
    hook = sample_dump_hook(cfg, run_dir, vae) if with_samples else None
    with stage_lock(rundir.stage_dir(run_dir, STAGE)):
        result = train_dit(cfg, run_dir, hook, vae.model)
        return write_result(rundir.stage_dir(run_dir, STAGE), result.seconds)
