"""The `ldlm` command: `ldlm <stage> --exp bbc_news --preset cpu --run-dir runs/x --set k=v`.

Stages: data, tokenizer, vae, latents, dit, ar, reference, eval (each trains or computes one
stage of a run, see README "Stages"); `ldlm sample` prints samples from a trained run and
`ldlm notebooks` executes the notebooks on one. User errors (a bad config key, a missing
stage) are printed as one line, exit status 2. The heavy imports happen after parsing, so
`--help` is fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

from ldlm.config import load_experiment
from ldlm.errors import LdlmError, TrainingStopped

# stage -> (its function "module:function", one line of help)
STAGES = {
    "data": ("ldlm.stages.data:run_data", "build the corpus as a TFDS data set"),
    "tokenizer": ("ldlm.stages.data:run_tokenizer", "train sentencepiece, cut token blocks"),
    "vae": ("ldlm.stages.vae:run_vae", "train and evaluate the TextVAE (resumes)"),
    "latents": ("ldlm.stages.latents:run_latents", "encode the corpus with the trained VAE"),
    "decoder": ("ldlm.stages.decoder:run_decoder",
                "fine-tune the decoder to see the previous block (resumes)"),
    "dit": ("ldlm.stages.dit:run_dit", "train the latent DiT, dump samples (resumes)"),
    "ar": ("ldlm.stages.ar:run_ar", "train the autoregressive baseline (resumes)"),
    "reference": ("ldlm.stages.ar:run_reference", "train the reference LM (resumes)"),
    "eval": ("ldlm.stages.eval:run_eval", "ldlm against the AR baseline and real text"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ldlm", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    for name, (_, help_) in STAGES.items():
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--exp", default="bbc_news",
                       help="experiment name (experiments/<name>.py) or path to its .py file")
        s.add_argument("--preset", default="cpu", help="tiny | cpu | base")
        s.add_argument("--run-dir", default=None,
                       help="run directory (default runs/<exp>_<preset>)")
        s.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE",
                       help="config override, e.g. --set data.block_len=128 (repeatable)")
    s = sub.add_parser("sample", help="print samples and their speed from a trained run")
    s.add_argument("--run-dir", default="runs/bbc_news_cpu", help="a run with a trained DiT")
    s.add_argument("--steps", type=int, default=None,
                   help="denoising steps, 1 .. 1000 (default: the prior's own: 16 for a "
                        "diffusion prior, 1 for an energy head)")
    s.add_argument("--step", type=int, default=None,
                   help="the DiT checkpoint's training step (default: the newest that loads)")
    s.add_argument("-n", type=int, default=8, help="number of samples")
    s.add_argument("--sampler", default="dpm++", help="ddpm | ddim | dpm++")
    s.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale (with --label; 1 = plain conditional)")
    s.add_argument("--label", default=None, help="class label, e.g. sports")
    s.add_argument("--prompt", default=None, help="text to continue")
    s.add_argument("--num-blocks", type=int, default=1, help="VAE blocks per sample")
    s.add_argument("--max-tokens", type=int, default=None,
                   help="tokens per sample (instead of --num-blocks)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0 .. 1)")
    s.add_argument("--grid", default="uniform", help="uniform | quadratic")
    s.add_argument("--temperature", type=float, default=1.0,
                   help="scales the starting and injected noise (below 1: likelier, less "
                        "varied text)")
    s = sub.add_parser("notebooks", help="execute notebooks/ on a finished run")
    s.add_argument("--run-dir", default="runs/bbc_news_cpu")
    s.add_argument("--only", action="append", default=None,
                   help="notebook name without .py (repeatable)")
    return p


def run_stage(args: argparse.Namespace) -> None:
    import importlib

    from ldlm.distributed import initialize_from_env
    from ldlm.rundir import setup_logging
    from ldlm.stages.choices import check_choices

    initialize_from_env()  # before anything touches jax
    setup_logging()
    cfg = check_choices(load_experiment(args.exp, args.preset, args.overrides))
    run_dir = pathlib.Path(args.run_dir or f"runs/{pathlib.Path(args.exp).stem}_{args.preset}")
    module, function = STAGES[args.command][0].split(":")
    getattr(importlib.import_module(module), function)(cfg, run_dir)


def run_sample(args: argparse.Namespace) -> None:
    """Prints each sample, then the wall-clock time and generated tokens per second (VAE
    decoding included; the first call's compilation is timed separately)."""
    from ldlm.data.tokenizer import EOS_ID
    from ldlm.diffusion.spec import SamplingSpec
    from ldlm.inference.generation import LatentDiffusionPipeline
    from ldlm.rundir import setup_logging

    setup_logging()  # warnings (a skipped damaged checkpoint) in the stages' format
    # checked before anything is loaded: a bad setting fails at once
    spec = SamplingSpec(steps=16 if args.steps is None else args.steps, sampler=args.sampler,
                        grid=args.grid, eta=args.eta, temperature=args.temperature,
                        guidance=args.guidance, label=args.label, seed=args.seed)
    pipe = LatentDiffusionPipeline.from_pretrained(pathlib.Path(args.run_dir), step=args.step)
    if args.steps is None:
        spec = dataclasses.replace(spec, steps=pipe.sampler.default_steps)
    kwargs = dict(n=args.n, prompt=args.prompt, num_blocks=args.num_blocks,
                  max_tokens=args.max_tokens)
    start = time.perf_counter()
    pipe.generate_tokens_with(spec, **kwargs)  # compiles; same shapes as the timed call
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    samples = pipe.generate_tokens_with(spec, **kwargs)
    texts = [pipe.vae.tokenizer.decode(ids) for ids in samples]  # decoding is timed too
    seconds = time.perf_counter() - start
    what = f"continuing {args.prompt!r}" if args.prompt else (args.label or "unconditional")
    for i, (ids, text) in enumerate(zip(samples, texts)):
        # a sample the prior ends early (EOS) is shorter than asked: say so, or an empty
        # continuation reads as a bug
        ending = "; ended with EOS" if EOS_ID in ids else ""
        print(f"--- sample {i} ({what}, {spec.steps} steps, {pipe.sampler.describe()} "
              f"{args.sampler}; "
              f"{len(ids)} tokens{ending})")
        print(text)
    tokens = sum(len(ids) for ids in samples)
    print(f"--- {len(texts)} samples in {seconds:.2f} s ({tokens / seconds:.0f} tokens/s; "
          f"first call with compilation {compile_s:.2f} s)")


def run_notebooks(args: argparse.Namespace) -> None:
    from ldlm.rundir import setup_logging
    from ldlm.stages.notebooks import run_notebooks as execute

    setup_logging()

    for path in execute(args.run_dir, args.only):
        print(f"executed {path}")


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    command = {"sample": run_sample, "notebooks": run_notebooks}.get(args.command, run_stage)
    try:
        command(args)
    except TrainingStopped as e:  # a graceful stop, not an error: the status tells which
        print(f"ldlm: {e}", file=sys.stderr)
        sys.exit(e.exit_status)
    except LdlmError as e:
        print(f"ldlm: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
