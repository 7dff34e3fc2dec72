"""The generative heads of the latent-autoregressive prior: small MLPs that draw a latent
given the backbone's hidden state h (MAR's adaLN MLP, arXiv 2406.11838; CALM's energy head).

Both are `head_layers` residual blocks x + gate * mlp(modulate(norm(x), shift, scale)) whose
shift / scale / gate come from the condition c (zero-initialised, so every block starts as
the identity), then a modulated, zero-initialised output projection to D.

- `EnergyHead`: x = norm(proj(u)), u ~ U(-0.5, 0.5)^noise_dim; c = norm(proj(h)). One pass
  draws one latent; trained with the energy score (ldlm/priors/latent_ar/objective.py).
- `FlowHead`: x = proj(z_t) on the straight path z_t = (1 - t) eps + t z (t = 0 noise,
  t = 1 data); c = norm(proj(h)) + time embedding; predicts the velocity z - eps.

Shape letters: D latent width, E backbone width, F head width; `...` any leading axes (a
samples axis after the positions: c is computed once per position and broadcast).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ldlm.config import DiTConfig
from ldlm.models import layers
from ldlm.models.dit_trunk import timestep_embedding


def _zeros():
    return nnx.initializers.zeros_init()


class AdaLNMLP(nnx.Module):
    """The residual adaLN MLP both heads share: x (..., F) and c (..., F) -> (..., D)."""

    def __init__(self, width: int, depth: int, out_dim: int, *, rngs: nnx.Rngs, dtype):
        F = width
        self.norms = nnx.List([layers.RMSNorm(F, rngs=rngs) for _ in range(depth)])
        self.ada = nnx.List([layers.dense(F, 3 * F, rngs=rngs, names=("embed", "mlp"),
                                          use_bias=True, init=_zeros(), dtype=dtype)
                             for _ in range(depth)])
        self.fc1 = nnx.List([layers.dense(F, F, rngs=rngs, names=("embed", "mlp"),
                                          use_bias=True, dtype=dtype) for _ in range(depth)])
        self.fc2 = nnx.List([layers.dense(F, F, rngs=rngs, names=("mlp", "embed"),
                                          use_bias=True, dtype=dtype) for _ in range(depth)])
        self.final_norm = layers.RMSNorm(F, rngs=rngs)
        self.final_ada = layers.dense(F, 2 * F, rngs=rngs, names=("embed", "mlp"),
                                      use_bias=True, init=_zeros(), dtype=dtype)
        self.out = layers.dense(F, out_dim, rngs=rngs, names=("embed", "latent"),
                                use_bias=True, init=_zeros(), dtype=dtype)

    def __call__(self, x, c):
        act = jax.nn.silu(c)
        for norm, ada, fc1, fc2 in zip(self.norms, self.ada, self.fc1, self.fc2):
            shift, scale, gate = jnp.split(ada(act), 3, axis=-1)
            x = x + gate * fc2(jax.nn.silu(fc1(modulate_any(norm(x), shift, scale))))
        shift, scale = jnp.split(self.final_ada(act), 2, axis=-1)
        return self.out(modulate_any(self.final_norm(x), shift, scale)).astype(jnp.float32)


def modulate_any(x, shift, scale):
    """adaLN modulation with shift / scale broadcast against x on any leading axes."""
    return x * (1 + scale) + shift


class EnergyHead(nnx.Module):
    """One latent per pass from uniform noise (see the module docstring)."""

    def __init__(self, cfg: DiTConfig, latent_dim: int, *, rngs: nnx.Rngs, dtype):
        F = cfg.head_width or cfg.width
        self.noise_dim, self.dtype = cfg.noise_dim, dtype
        self.noise_in = layers.dense(cfg.noise_dim, F, rngs=rngs, names=(None, "embed"),
                                     use_bias=True, dtype=dtype)
        self.noise_norm = layers.RMSNorm(F, rngs=rngs)
        self.cond_in = layers.dense(cfg.width, F, rngs=rngs, names=("embed", "mlp"),
                                    use_bias=True, dtype=dtype)
        self.cond_norm = layers.RMSNorm(F, rngs=rngs)
        self.mlp = AdaLNMLP(F, cfg.head_layers, latent_dim, rngs=rngs, dtype=dtype)

    def condition(self, h_xE):
        """c (..., F) from the backbone state: computed once per position."""
        return self.cond_norm(self.cond_in(h_xE))

    def draw_noise(self, key, shape) -> jax.Array:
        """Uniform noise of shape + (noise_dim,)."""
        return jax.random.uniform(key, shape + (self.noise_dim,), minval=-0.5, maxval=0.5)

    def __call__(self, c_xF, u_xU):
        """Latents (..., D) from the condition and noise (c broadcast against u)."""
        return self.mlp(self.noise_norm(self.noise_in(u_xU.astype(self.dtype))), c_xF)

    def sample(self, c_xF, key, samples: int):
        """`samples` latents per condition, (..., samples, D), one pass each."""
        u = self.draw_noise(key, c_xF.shape[:-1] + (samples,))
        return self(c_xF[..., None, :], u)


class FlowHead(nnx.Module):
    """The velocity of the straight path from noise to the latent (see the module
    docstring)."""

    def __init__(self, cfg: DiTConfig, latent_dim: int, *, rngs: nnx.Rngs, dtype):
        F = cfg.head_width or cfg.width
        self.F, self.dtype = F, dtype
        self.z_in = layers.dense(latent_dim, F, rngs=rngs, names=("latent", "embed"),
                                 use_bias=True, dtype=dtype)
        self.cond_in = layers.dense(cfg.width, F, rngs=rngs, names=("embed", "mlp"),
                                    use_bias=True, dtype=dtype)
        self.cond_norm = layers.RMSNorm(F, rngs=rngs)
        self.time_in = layers.dense(F, F, rngs=rngs, names=("embed", "mlp"), use_bias=True,
                                    dtype=dtype)
        self.time_out = layers.dense(F, F, rngs=rngs, names=("mlp", "embed"), use_bias=True,
                                     dtype=dtype)
        self.mlp = AdaLNMLP(F, cfg.head_layers, latent_dim, rngs=rngs, dtype=dtype)

    def condition(self, h_xE):
        return self.cond_norm(self.cond_in(h_xE))

    def __call__(self, c_xF, z_t_xD, t_x):
        """Velocity (..., D) at z_t and time t (t has z_t's leading shape)."""
        temb = self.time_out(jax.nn.silu(self.time_in(
            timestep_embedding(t_x, self.F).astype(self.dtype))))
        return self.mlp(self.z_in(z_t_xD.astype(self.dtype)), c_xF + temb)

    def sample(self, c_xF, key, steps, temperature=1.0, samples: int = 1, latent_dim=None):
        """`samples` latents per condition, (..., samples, D): Euler steps along the
        path from noise scaled by `temperature` (t 0 -> 1); `steps` may be traced."""
        D = latent_dim or self.mlp.out.out_features
        c = c_xF[..., None, :]
        z = temperature * jax.random.normal(key, c_xF.shape[:-1] + (samples, D))
        dt = 1.0 / steps

        def body(i, z):
            t = jnp.full(z.shape[:-1], i * dt, jnp.float32)
            return z + dt * self(c, z, t)

        return jax.lax.fori_loop(0, steps, body, z)


__all__ = ["AdaLNMLP", "EnergyHead", "FlowHead"]
