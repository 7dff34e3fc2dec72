# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The denoising process
#
# One trajectory decoded at every step; the same seed at step budgets 1 ... 256; the effect
# of the guidance scale on topic accuracy; editing at strengths 0.1 ... 1.0; continuation
# over several blocks and infilling between two texts. Set `LDLM_RUN` to a run directory
# with a trained DiT (default `runs/bbc_news_cpu`).

# %%
import os
import pathlib

RUN_DIR = os.environ.get("LDLM_RUN", "runs/bbc_news_cpu")
OUT_DIR = pathlib.Path(os.environ.get("LDLM_NOTEBOOK_OUT", os.path.join(RUN_DIR, "notebooks")))
BUDGETS = [int(x) for x in os.environ.get("LDLM_BUDGETS", "1,2,4,8,16,32,64,128,256").split(",")]
SAMPLES_PER_TOPIC = int(os.environ.get("LDLM_SAMPLES_PER_TOPIC", "16"))
OUT_DIR.mkdir(parents=True, exist_ok=True)

# %%
import matplotlib.pyplot as plt
import numpy as np

from ldlm.eval.compare import split_blocks
from ldlm.eval.sample_metrics import TopicClassifier
from ldlm import LatentDiffusionPipeline

pipe = LatentDiffusionPipeline.from_pretrained(RUN_DIR)
print("topics:", pipe.label_names, "| context (continuation, infilling):", pipe.has_context)

# %% [markdown]
# ## One trajectory, decoded at every step
# What the DiT currently believes the clean text is, after each of 16 DPM-Solver++ steps.

# %%
for i, texts in enumerate(pipe.trajectory(n=1, steps=16, sampler="dpm++", seed=0)):
    print(f"step {i + 1:2d}: {texts[0][:160]!r}")

# %% [markdown]
# ## Does the DiT denoise?
# Validation latents noised to time t, then decoded two ways: as they are (rescaled by
# 1/alpha, no denoiser) and after one pass of the DiT (its clean estimate). Where the DiT has
# learned the language, its curve lies above the other at mid-range t; a DiT that has only
# learned to shrink towards the mean does no better than the noisy latents.

# %%
from ldlm.eval.denoising import denoising_accuracy, validation_latents

rows = denoising_accuracy(pipe, validation_latents(RUN_DIR, 256))
ts = [r["t"] for r in rows]
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(ts, [r["accuracy_noisy"] for r in rows], "o-", label="noisy latents, rescaled")
ax.plot(ts, [r["accuracy_estimate"] for r in rows], "s-", label="DiT clean estimate")
ax.set_xlabel("diffusion time t")
ax.set_ylabel("token accuracy")
ax.legend()
fig.tight_layout()
fig.savefig(OUT_DIR / "denoising_accuracy.png", dpi=80)
plt.show()
for r in rows:
    print(f"t={r['t']:.1f}  noisy {r['accuracy_noisy']:.3f}  DiT {r['accuracy_estimate']:.3f}  "
          f"mse {r['mse_estimate']:.3f} (linear {r['mse_linear']:.3f})")

# %% [markdown]
# ## The same seed at every step budget

# %%
for steps in BUDGETS:
    text = pipe.generate(n=1, steps=steps, sampler="dpm++", seed=1)[0]
    print(f"{steps:4d} steps: {text[:160]!r}")

# %% [markdown]
# ## Guidance scale against topic accuracy
# A bag-of-words classifier trained on the training split labels class-conditional samples;
# its accuracy on real validation blocks is the ceiling.

# %%
train_seqs, train_labels = split_blocks(RUN_DIR, "train")
clf = TopicClassifier(pipe.vae.tokenizer.vocab_size).fit(train_seqs, train_labels)
val_seqs, val_labels = split_blocks(RUN_DIR, "validation")
ceiling = clf.accuracy(val_seqs, val_labels)
scales = [0.0, 1.0, 2.0, 4.0]
labels = [name for name in pipe.label_names for _ in range(SAMPLES_PER_TOPIC)]
truth = [pipe.label_names.index(x) for x in labels]
accuracy = [clf.accuracy(pipe.generate_tokens(n=len(labels), steps=16, label=labels,
                                              guidance=g, seed=2), truth) for g in scales]
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(scales, accuracy, "o-", label="ldlm samples")
ax.axhline(ceiling, color="k", linestyle="--", label="real validation blocks")
ax.axhline(1 / len(pipe.label_names), color="gray", linestyle=":", label="chance")
ax.set_xlabel("guidance scale")
ax.set_ylabel("topic accuracy")
ax.legend()
fig.savefig(OUT_DIR / "guidance_vs_topic_accuracy.png", dpi=80)
plt.show()
print(dict(zip(scales, np.round(accuracy, 3))), "ceiling", round(ceiling, 3))

# %% [markdown]
# ## Editing: re-noise to a strength, denoise again

# %%
source = ("Shares in the mobile phone firm rose sharply on Monday after it reported record "
          "profits for the year.")
for s in (0.1, 0.3, 0.5, 0.7, 1.0):
    print(f"strength {s:.1f}: {pipe.edit(source, strength=s, steps=16, seed=3)[0][:160]!r}")

# %% [markdown]
# ## Continuation over several blocks, and infilling

# %%
if pipe.has_context:
    prompt = "The government has announced plans to cut taxes for small firms."
    print("continuation:", pipe.generate(n=1, steps=16, prompt=prompt, num_blocks=3, seed=4))
    print("infill:", pipe.infill(prompt, "The opposition said the plans were not enough.",
                                 n=1, steps=16, seed=5))
else:
    print("this run's DiT was trained without neighbouring-block context")
