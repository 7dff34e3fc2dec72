"""ldlm: continuous latent diffusion language models in JAX.

    from ldlm import LatentDiffusionPipeline, TextVAE
    pipe = LatentDiffusionPipeline.from_pretrained("runs/bbc_news_cpu")
    texts = pipe.generate(n=4, steps=16)
    vae = TextVAE.from_run("runs/bbc_news_cpu")
"""

__version__ = "0.1.0"
__all__ = ["LatentDiffusionPipeline", "TextVAE"]


def __getattr__(name):  # lazy: `import ldlm` stays light (no jax import)
    if name == "TextVAE":
        from ldlm.inference.textvae import TextVAE
        return TextVAE
    if name == "LatentDiffusionPipeline":
        from ldlm.inference.generation import LatentDiffusionPipeline
        return LatentDiffusionPipeline
    raise AttributeError(f"module 'ldlm' has no attribute {name!r}")
