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
# coloured by topic, how well topics separate, nearest neighbours of a text, linear and
# spherical interpolation between two texts, decoding accuracy against latent noise, and
# per-dimension statistics and KL. Set `LDLM_RUN` to the run directory (default
# `runs/bbc_news_cpu`) and, to see two latent spaces side by side (say an autoencoder aligned
# to a causal LM, `vae.align_weight`, and one that is not), `LDLM_COMPARE_RUN` to a second
# run on the same data; pictures are saved under `LDLM_NOTEBOOK_OUT` (default
# `<run>/notebooks`).

# %%
import os
import pathlib

RUN_DIR = os.environ.get("LDLM_RUN", "runs/bbc_news_cpu")
COMPARE_RUN = os.environ.get("LDLM_COMPARE_RUN", "")
OUT_DIR = pathlib.Path(os.environ.get("LDLM_NOTEBOOK_OUT", os.path.join(RUN_DIR, "notebooks")))
MAX_BLOCKS = int(os.environ.get("LDLM_MAX_BLOCKS", "1000"))
OUT_DIR.mkdir(parents=True, exist_ok=True)

# %%
import matplotlib.pyplot as plt
import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from ldlm import TextVAE
from ldlm.eval.compare import split_blocks


def load(run_dir):
    """One latent space: the run's VAE, its validation blocks and their posteriors."""
    vae = TextVAE.from_run(run_dir)
    seqs, labels = split_blocks(run_dir, "validation", MAX_BLOCKS)
    tokens, mask = vae.pad(seqs)
    mean, logvar = vae.posterior_tokens(tokens)  # B x N x D each
    v = vae.cfg.vae
    name = f"{pathlib.Path(run_dir).name}: {v.kind}" + (
        f", aligned ({v.align_weight} to {v.align_teacher})" if v.align_weight else
        ", not aligned")
    return dict(vae=vae, seqs=seqs, labels=np.array(labels), tokens=tokens, mask=mask,
                mean=mean, logvar=logvar, flat=mean.reshape(len(mean), -1), name=name)


spaces = [load(r) for r in [RUN_DIR] + ([COMPARE_RUN] if COMPARE_RUN else [])]
names = spaces[0]["vae"].label_names or ["(unlabelled)"]
for sp in spaces:
    vae = sp["vae"]
    print(f"{sp['name']}: {len(sp['seqs'])} validation blocks -> latents "
          f"{sp['mean'].shape[1:]} ({vae.block_len} tokens -> {vae.num_latents} x "
          f"{vae.latent_dim})")

# %% [markdown]
# ## A 2-D picture of the blocks, coloured by topic
# Each block is its N x d latent flattened; PCA keeps the directions of largest variance,
# t-SNE keeps neighbourhoods. One row per latent space.

# %%
fig, axes = plt.subplots(len(spaces), 2, figsize=(12, 5 * len(spaces)), squeeze=False)
for row, sp in zip(axes, spaces):
    flat, labels = sp["flat"], sp["labels"]
    pca = PCA(n_components=2, random_state=0).fit(flat)
    xy_tsne = TSNE(n_components=2, perplexity=min(30, max(2, len(flat) // 4)), init="pca",
                   random_state=0).fit_transform(flat)
    for ax, xy, title in ((row[0], pca.transform(flat),
                           f"PCA ({pca.explained_variance_ratio_.sum():.1%} of the variance)"),
                          (row[1], xy_tsne, "t-SNE")):
        for i, name in enumerate(names):
            sel = labels == i
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, label=name)
        ax.set_title(f"{sp['name']}\n{title}", fontsize=9)
    row[0].legend(markerscale=3)
fig.savefig(OUT_DIR / "latent_projection.png", dpi=80)
plt.show()

# %% [markdown]
# ## How well the topics separate
# Accuracy of a 5-nearest-neighbour topic classifier on the flattened latents (5-fold
# cross-validation; chance is about 1 / the number of topics).

# %%
for sp in spaces:
    flat, labels = sp["flat"], sp["labels"]
    counts = np.unique(labels, return_counts=True)[1]
    folds = int(min(5, counts.min())) if len(counts) > 1 else 0
    if folds >= 2:
        acc = cross_val_score(KNeighborsClassifier(5), flat, labels, cv=folds).mean()
        print(f"{sp['name']}: 5-NN topic accuracy {acc:.1%}")
    else:
        print(f"{sp['name']}: too few blocks per topic to cross-validate")

# %% [markdown]
# ## Nearest neighbours of a text

# %%
for sp in spaces:
    vae, seqs, flat, labels = sp["vae"], sp["seqs"], sp["flat"], sp["labels"]
    q = vae.encode_tokens(sp["tokens"][:1]).reshape(1, -1)
    dist = np.sqrt(((flat - q) ** 2).mean(-1))
    print(f"{sp['name']}\nquery:", repr(vae.tokenizer.decode(seqs[0])[:200]))
    for j in np.argsort(dist)[1:4]:
        print(f"  rms distance {dist[j]:.3f} [{names[labels[j]] if vae.label_names else '-'}]:",
              repr(vae.tokenizer.decode(seqs[j])[:200]))

# %% [markdown]
# ## Interpolating between two texts
# Linear interpolation shrinks the latents between the endpoints; spherical interpolation
# (per latent vector) keeps their norm.

# %%


def slerp(x, y, t):
    """Per latent vector spherical interpolation, N x D."""
    xn, yn = np.linalg.norm(x, axis=-1, keepdims=True), np.linalg.norm(y, axis=-1, keepdims=True)
    cos = np.clip(((x / xn) * (y / yn)).sum(-1, keepdims=True), -1, 1)
    omega = np.arccos(cos)
    so = np.where(np.sin(omega) < 1e-6, 1.0, np.sin(omega))
    out = np.sin((1 - t) * omega) / so * x + np.sin(t * omega) / so * y
    return np.where(np.sin(omega) < 1e-6, (1 - t) * x + t * y, out)


ts = np.linspace(0, 1, 5)
for sp in spaces:
    vae, mean = sp["vae"], sp["mean"]
    a, b = mean[0], mean[min(len(mean) - 1, len(mean) // 2)]
    lin = vae.decode(np.stack([(1 - t) * a + t * b for t in ts]))
    sph = vae.decode(np.stack([slerp(a, b, t) for t in ts]))
    print(sp["name"])
    for t, l_text, s_text in zip(ts, lin, sph):
        print(f"t={t:.2f}\n  linear:    {l_text[:150]!r}\n  spherical: {s_text[:150]!r}")

# %% [markdown]
# ## Decoding accuracy against latent noise
# Gaussian noise of sigma times each dimension's standard deviation; the DiT's samples only
# need to land within this tolerance of a real encoding.

# %%
sigmas = [0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]
fig, ax = plt.subplots(figsize=(5, 3.5))
for sp in spaces:
    vae, mean, tokens, mask = sp["vae"], sp["mean"], sp["tokens"], sp["mask"]
    sp["std_D"] = sp["flat"].reshape(-1, vae.latent_dim).std(0)
    rng = np.random.default_rng(0)
    acc = []
    for s in sigmas:
        noisy = mean + s * sp["std_D"] * rng.standard_normal(mean.shape).astype(np.float32)
        pred, _ = vae.decode_tokens(noisy)
        acc.append(float(((pred == tokens) & mask).sum() / mask.sum()))
    ax.plot(sigmas, acc, "o-", label=sp["name"])
    print(sp["name"], dict(zip(sigmas, np.round(acc, 4))))
ax.set_xlabel("latent noise sigma (x per-dimension std)")
ax.set_ylabel("token accuracy")
ax.set_ylim(0, 1)
ax.legend(fontsize=7)
fig.savefig(OUT_DIR / "accuracy_vs_noise.png", dpi=80)
plt.show()

# %% [markdown]
# ## Per-dimension statistics and KL
# KL(q(z|x) || N(0, 1)) per latent coordinate, averaged over blocks and latent positions.

# %%
fig, axes = plt.subplots(len(spaces), 3, figsize=(14, 3.5 * len(spaces)), squeeze=False)
for row, sp in zip(axes, spaces):
    vae, mean, logvar = sp["vae"], sp["mean"], sp["logvar"]
    kl_D = (0.5 * (mean ** 2 + np.exp(logvar) - logvar - 1)).mean(axis=(0, 1))
    row[0].bar(range(vae.latent_dim), sp["flat"].reshape(-1, vae.latent_dim).mean(0))
    row[0].set_title(f"{sp['name']}\nmean per dimension", fontsize=9)
    row[1].bar(range(vae.latent_dim), sp["std_D"])
    row[1].set_title("std per dimension")
    row[2].bar(range(vae.latent_dim), kl_D)
    row[2].set_title(f"KL per dimension (mean {kl_D.mean():.2f} nats)")
fig.savefig(OUT_DIR / "latent_dimensions.png", dpi=80)
plt.show()
