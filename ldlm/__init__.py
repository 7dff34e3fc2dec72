"""ldlm: continuous latent diffusion language models in JAX.

    from ldlm import TextVAE
    vae = TextVAE.from_run("runs/bbc_news_cpu")
"""

__version__ = "0.1.0"
__all__ = ["TextVAE"]


def __getattr__(name):  # lazy: `import ldlm` stays light (no jax import)
    if name == "TextVAE":
        from ldlm.textvae import TextVAE
        return TextVAE
    raise AttributeError(f"module 'ldlm' has no attribute {name!r}")
