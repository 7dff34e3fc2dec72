"""Do the seams between VAE blocks read as continuous text? The VAE decoder (every block on
its own) against the seam decoder (`make decoder`: each block sees the one before), on the
same latents of the run's prior, beside real text.

--n texts of two VAE blocks (unconditional, --sampler at --steps, seed 0) are sampled once
per temperature of --temperatures and decoded both ways. Scored under the AR baseline (context one
block of L tokens):
- gen-PPL over each text's two blocks, each block scored alone (as block_size_table.py),
  with unigram entropy, and interpolated along the temperature sweep at --entropies
  (`matched`, as in block_size_table.py);
- at the seam: the NLL per token of the L/2 tokens after the seam given the L/2 before it
  (a window of L tokens centred on the seam), against the same measure inside the first
  block (its second half given its first, where it is full): both with L/2 tokens of
  context, so their difference is what crossing a seam costs.
Texts whose first block is shorter than L/2 tokens, or that end within L/2 tokens after
it, are left out of the seam measure; first blocks shorter than L out of the other (both
counted).

    .venv/bin/python benchmarks/seams.py --run runs/bc_g1 \
        --out benchmarks/results/seams.json
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import numpy as np

from block_size_table import _ar_model, matched_ppl
from ldlm.eval.long_texts import real_texts


def seam_scores(texts_with_seam, scorer, L: int) -> dict:
    """Mean NLL per token of the L/2 tokens after the seam, and of the second half of a full
    first block, each given the L/2 tokens before them."""
    h = L // 2
    seam = [ids[s - h:s + h] for ids, s in texts_with_seam if s >= h and len(ids) >= s + h]
    middle = [ids[:L] for ids, s in texts_with_seam if s >= L]
    after_seam = np.concatenate([nll[h:] for nll in scorer.token_nll(seam)])
    in_block = np.concatenate([nll[h:] for nll in scorer.token_nll(middle)])
    return {"seam_texts": len(seam), "seam_nll": float(after_seam.mean()),
            "middle_texts": len(middle), "middle_nll": float(in_block.mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/bbc_news_cpu")
    p.add_argument("--ar-run", default="", help="run holding the AR baseline (default --run)")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--temperatures", default="1.0,0.85,0.7")
    p.add_argument("--entropies", default="5.5,5.75,6.0")
    p.add_argument("--out", default="benchmarks/results/seams.json")
    args = p.parse_args()

    from ldlm.data.tokenizer import EOS_ID
    from ldlm.eval import compare
    from ldlm.eval import sample_metrics as metrics
    from ldlm.inference.generation import LatentDiffusionPipeline
    from ldlm.inference.latent_text import LatentText
    from ldlm.inference.textvae import TextVAE

    pipe = LatentDiffusionPipeline.from_pretrained(args.run)
    L = pipe.vae.block_len
    scorer = compare.ReferenceLM(_ar_model(args.ar_run or args.run, pipe), L)
    temps = [float(t) for t in args.temperatures.split(",")]
    latents = {T: pipe.sample_latents(n=args.n, steps=args.steps, sampler=args.sampler,
                                      seed=0, temperature=T, num_blocks=2) for T in temps}
    rows = []

    def score(system: str, texts_with_seam, T=None) -> None:
        texts = [t for t, _ in texts_with_seam]
        chunks = [t[i:i + L] for t in texts for i in range(0, len(t), L) if t[i:i + L]]
        nll, count, _ = scorer.score(chunks)
        row = {"system": system, "temperature": T, "gen_ppl": metrics.perplexity(nll, count),
               "unigram_entropy": metrics.unigram_entropy(texts),
               "mean_tokens": float(np.mean([len(t) for t in texts])),
               **seam_scores(texts_with_seam, scorer, L)}
        print(json.dumps(row), flush=True)
        rows.append(row)

    # real text: two consecutive test blocks, the seam where the first block ends
    real = real_texts(args.run, args.n, 2 * L)
    score("real text", [(t, min(L, len(t))) for t in real])
    # the seam decoder also without history (every block read by its history stream):
    # what its fine-tuning alone does
    for name, decoder, history in (("vae decoder", "vae", False),
                                   ("seam decoder", "seam", True),
                                   ("seam decoder, no history", "seam", False)):
        text = LatentText(TextVAE.from_run(args.run, decoder=decoder))
        for T, z in latents.items():
            reader = text.vae.reader(args.n)
            first = text.block_tokens(z[:, 0], reader)
            second = text.block_tokens(z[:, 1], reader if history else
                                       text.vae.reader(args.n))
            score(name, [(a + (b if EOS_ID not in a else []), len(a))
                         for a, b in zip(first, second)], T)
    entropies = [float(h) for h in args.entropies.split(",")]
    matched = {name: {str(h): matched_ppl([r for r in rows if r["system"] == name], h)
                      for h in entropies} for name in dict.fromkeys(r["system"] for r in rows)}
    print(json.dumps({"matched gen-PPL": matched}))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "device": jax.devices()[0].device_kind,
                               "rows": rows, "matched": matched}, indent=1) + "\n")


if __name__ == "__main__":
    main()
