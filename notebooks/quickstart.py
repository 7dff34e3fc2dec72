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
# # Quickstart: text from a trained run
#
# The README's example, step by step. Train a run first (`make demo`), or point `LDLM_RUN`
# at another run directory.

# %%
import os

RUN_DIR = os.environ.get("LDLM_RUN", "runs/bbc_news_cpu")

# %% [markdown]
# Load the DiT (EMA weights), its VAE and the latent statistics of the run:

# %%
from ldlm import LatentDiffusionPipeline

pipe = LatentDiffusionPipeline.from_pretrained(RUN_DIR)
print("topics:", pipe.label_names)

# %% [markdown]
# Generate with a step budget chosen at call time. The loop is compiled once per sampler
# and batch shape; changing `steps` or `guidance` does not recompile.

# %%
for text in pipe.generate(n=2, steps=16, sampler="dpm++", seed=0):
    print(repr(text))

# %% [markdown]
# Class-conditional with classifier-free guidance (scale 1 = plain conditional):

# %%
label = pipe.label_names[0] if pipe.label_names else None
print(pipe.generate(n=2, steps=16, label=label, guidance=2.0, seed=0))

# %% [markdown]
# Same seed, same output:

# %%
assert pipe.generate(n=2, steps=8, seed=7) == pipe.generate(n=2, steps=8, seed=7)

# %% [markdown]
# Editing an existing text: strength 0 returns it unchanged, 1 keeps nothing of it.

# %%
print(pipe.edit("Shares rose sharply on Monday after the firm reported record profits.",
                strength=0.4, steps=16))
