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
# # Latent geometry of a trained TextVAE
#
# Encodes the validation blocks of a run and looks at the latent space: a 2-D projection
# coloured by topic, nearest neighbours of a text, linear and spherical interpolation between
# two texts, decoding accuracy against latent noise, and per-dimension statistics and KL.
# Set `LDLM_RUN` to the run directory (default `runs/bbc_news_cpu`); pictures are saved
# under `LDLM_NOTEBOOK_OUT` (default `<run>/notebooks`).

# %%
import os
import pathlib

RUN_DIR = os.environ.get("LDLM_RUN", "runs/bbc_news_cpu")
OUT_DIR = pathlib.Path(os.environ.get("LDLM_NOTEBOOK_OUT", os.path.join(RUN_DIR, "notebooks")))
MAX_BLOCKS = int(os.environ.get("LDLM_MAX_BLOCKS", "1000"))
OUT_DIR.mkdir(parents=True, exist_ok=True)

# %%
import matplotlib.pyplot as plt
import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from ldlm import TextVAE
from ldlm.eval.compare import split_blocks

vae = TextVAE.from_run(RUN_DIR)
seqs, labels = split_blocks(RUN_DIR, "validation", MAX_BLOCKS)
tokens, mask = vae.pad(seqs)
mean, logvar = vae.posterior_tokens(tokens)  # B x N x D each
labels = np.array(labels)
names = vae.label_names or ["(unlabelled)"]
print(f"{len(seqs)} validation blocks -> latents {mean.shape[1:]} "
      f"({vae.block_len} tokens -> {vae.num_latents} x {vae.latent_dim})")

# %% [markdown]
# ## A 2-D picture of the blocks, coloured by topic
# Each block is its N x d latent flattened; PCA keeps the directions of largest variance,
# t-SNE keeps neighbourhoods.

# %%
flat = mean.reshape(len(mean), -1)
pca = PCA(n_components=2, random_state=0).fit(flat)
xy_pca = pca.transform(flat)
xy_tsne = TSNE(n_components=2, perplexity=min(30, max(2, len(flat) // 4)), init="pca",
               random_state=0).fit_transform(flat)
fig, axes = plt.subplots(1, 2, figsize=(12, 5))
for ax, xy, title in ((axes[0], xy_pca, f"PCA ({pca.explained_variance_ratio_.sum():.1%} "
                       "of the variance)"), (axes[1], xy_tsne, "t-SNE")):
    for i, name in enumerate(names):
        sel = labels == i
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, label=name)
    ax.set_title(title)
axes[0].legend(markerscale=3)
fig.savefig(OUT_DIR / "latent_projection.png", dpi=80)
plt.show()

# %% [markdown]
# ## Nearest neighbours of a text

# %%
query = vae.tokenizer.decode(seqs[0])
q = vae.encode_tokens(tokens[:1]).reshape(1, -1)
dist = np.sqrt(((flat - q) ** 2).mean(-1))
print("query:", repr(query[:200]))
for j in np.argsort(dist)[1:4]:
    print(f"  rms distance {dist[j]:.3f} [{names[labels[j]] if vae.label_names else '-'}]:",
          repr(vae.tokenizer.decode(seqs[j])[:200]))

# %% [markdown]
# ## Interpolating between two texts
# Linear interpolation shrinks the latents between the endpoints; spherical interpolation
# (per latent vector) keeps their norm.

# %%
a, b = mean[0], mean[min(len(mean) - 1, len(mean) // 2)]


def slerp(x, y, t):
    """Per latent vector spherical interpolation, N x D."""
    xn, yn = np.linalg.norm(x, axis=-1, keepdims=True), np.linalg.norm(y, axis=-1, keepdims=True)
    cos = np.clip(((x / xn) * (y / yn)).sum(-1, keepdims=True), -1, 1)
    omega = np.arccos(cos)
    so = np.where(np.sin(omega) < 1e-6, 1.0, np.sin(omega))
    out = np.sin((1 - t) * omega) / so * x + np.sin(t * omega) / so * y
    return np.where(np.sin(omega) < 1e-6, (1 - t) * x + t * y, out)


ts = np.linspace(0, 1, 5)
lin = vae.decode(np.stack([(1 - t) * a + t * b for t in ts]))
sph = vae.decode(np.stack([slerp(a, b, t) for t in ts]))
for t, l_text, s_text in zip(ts, lin, sph):
    print(f"t={t:.2f}\n  linear:    {l_text[:150]!r}\n  spherical: {s_text[:150]!r}")

# %% [markdown]
# ## Decoding accuracy against latent noise
# Gaussian noise of sigma times each dimension's standard deviation; the DiT's samples only
# need to land within this tolerance of a real encoding.

# %%
std_D = flat.reshape(-1, vae.latent_dim).std(0)
sigmas = [0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]
rng = np.random.default_rng(0)
acc = []
for s in sigmas:
    noisy = mean + s * std_D * rng.standard_normal(mean.shape).astype(np.float32)
    pred, _ = vae.decode_tokens(noisy)
    acc.append(float(((pred == tokens) & mask).sum() / mask.sum()))
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(sigmas, acc, "o-")
ax.set_xlabel("latent noise sigma (x per-dimension std)")
ax.set_ylabel("token accuracy")
ax.set_ylim(0, 1)
fig.savefig(OUT_DIR / "accuracy_vs_noise.png", dpi=80)
plt.show()
print(dict(zip(sigmas, np.round(acc, 4))))

# %% [markdown]
# ## Per-dimension statistics and KL
# KL(q(z|x) || N(0, 1)) per latent coordinate, averaged over blocks and latent positions.

# %%
kl_D = (0.5 * (mean ** 2 + np.exp(logvar) - logvar - 1)).mean(axis=(0, 1))
fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
axes[0].bar(range(vae.latent_dim), flat.reshape(-1, vae.latent_dim).mean(0))
axes[0].set_title("mean per dimension")
axes[1].bar(range(vae.latent_dim), std_D)
axes[1].set_title("std per dimension")
axes[2].bar(range(vae.latent_dim), kl_D)
axes[2].set_title(f"KL per dimension (mean {kl_D.mean():.2f} nats)")
fig.savefig(OUT_DIR / "latent_dimensions.png", dpi=80)
plt.show()
