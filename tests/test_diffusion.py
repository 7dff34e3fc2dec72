"""Schedules, targets and the DDIM sampler (pure functions)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldlm.diffusion import samplers, schedules

T = jnp.linspace(0.0, 1.0, 101)


@pytest.mark.parametrize("schedule", schedules.SCHEDULES)
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_variance_preserving_and_monotone(schedule, scale):
    ls = schedules.logsnr(T, schedule, scale)
    a, s = schedules.alpha_sigma(ls)
    np.testing.assert_allclose(a ** 2 + s ** 2, 1.0, rtol=1e-6)
    assert (np.diff(np.asarray(ls)) <= 0).all()  # SNR never increases with t
    assert (np.diff(np.asarray(ls))[5:-5] < 0).all()  # and strictly decreases inside
    assert float(ls[0]) > 8 and float(ls[-1]) < -8  # clean at t=0, noise at t=1


def test_snr_scale_shifts_log_snr():
    base = schedules.logsnr(T[10:-10], "cosine")
    shifted = schedules.logsnr(T[10:-10], "cosine", 0.5)
    np.testing.assert_allclose(shifted - base, 2 * np.log(0.5), rtol=1e-5)


@pytest.mark.parametrize("prediction", schedules.PREDICTIONS)
def test_targets_convert_back_to_x0_and_eps(prediction):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    x0 = jax.random.normal(k1, (6, 4, 8))
    eps = jax.random.normal(k2, (6, 4, 8))
    t = jax.random.uniform(k3, (6,), minval=0.05, maxval=0.95)
    a, s = schedules.alpha_sigma(schedules.logsnr(t))
    z = schedules.q_sample(x0, eps, a, s)
    out = schedules.target(prediction, x0, eps, a, s)
    np.testing.assert_allclose(schedules.to_x0(prediction, out, z, a, s), x0, atol=2e-4)
    np.testing.assert_allclose(schedules.to_eps(prediction, out, z, a, s), eps, atol=2e-4)


def test_min_snr_weights_agree_in_x0_space():
    ls = schedules.logsnr(T[1:-1])
    snr = np.exp(np.asarray(ls))
    w = {p: np.asarray(schedules.loss_weight("min_snr", ls, p, 5.0)) for p in ("eps", "x0", "v")}
    # ||eps error||^2 = snr ||x0 error||^2 and ||v error||^2 = (snr + 1) ||x0 error||^2
    np.testing.assert_allclose(w["eps"] * snr, w["x0"], rtol=1e-4)
    np.testing.assert_allclose(w["v"] * (snr + 1), w["x0"], rtol=1e-4)
    np.testing.assert_allclose(w["x0"], np.minimum(snr, 5.0), rtol=1e-5)


def test_time_sampling_ranges():
    for kind in ("uniform", "logit_normal"):
        t = schedules.sample_t(jax.random.PRNGKey(1), (4096,), kind)
        assert float(t.min()) > 0 and float(t.max()) < 1
    with pytest.raises(ValueError, match="unknown time sampling"):
        schedules.sample_t(jax.random.PRNGKey(1), (3,), "beta")


def _gaussian_denoiser(mu, var, prediction="v"):
    """The exact denoiser for data ~ N(mu, var) per coordinate (no self-conditioning use)."""
    def net(z, t, sc):
        a, s = schedules.alpha_sigma(schedules.logsnr(t))
        a, s = a[:, None, None], s[:, None, None]
        x0 = mu + a * var / (a ** 2 * var + s ** 2) * (z - a * mu)
        eps = (z - a * x0) / s
        return schedules.target(prediction, x0, eps, a[:, 0, 0], s[:, 0, 0])
    return net


def test_ddim_with_the_exact_denoiser_recovers_the_data_distribution():
    mu, var = 1.5, 0.25
    net = _gaussian_denoiser(mu, var)
    z_T = jax.random.normal(jax.random.PRNGKey(0), (4000, 4, 8))
    z = samplers.ddim(net, z_T, 50, jax.random.PRNGKey(1))
    assert abs(float(z.mean()) - mu) < 0.02
    assert abs(float(z.var()) - var) < 0.02


def test_ddim_is_deterministic_for_a_seed():
    net = _gaussian_denoiser(0.0, 1.0)
    z_T = jax.random.normal(jax.random.PRNGKey(0), (8, 4, 8))
    a = samplers.ddim(net, z_T, 10, jax.random.PRNGKey(3), eta=1.0)
    b = samplers.ddim(net, z_T, 10, jax.random.PRNGKey(3), eta=1.0)
    c = samplers.ddim(net, z_T, 10, jax.random.PRNGKey(4), eta=1.0)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
