"""Schedules, targets and the DDIM sampler (pure functions)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldlm.diffusion import samplers, schedules
from tests.helpers import compiles

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


def _moment_error(sampler, steps, mu=1.5, var=0.25, seed=0, **kw):
    net = _gaussian_denoiser(mu, var)
    z_T = jax.random.normal(jax.random.PRNGKey(seed), (4000, 4, 8))
    z = samplers.sample(net, z_T, steps, jax.random.PRNGKey(seed + 1), sampler=sampler, **kw)
    return abs(float(z.mean()) - mu) + abs(float(z.var()) - var)


@pytest.mark.parametrize("sampler,kw", [("ddim", {}), ("dpm++", {}), ("ddpm", {}),
                                        ("ddim", {"eta": 1.0}), ("dpm++", {"grid": "quadratic"})])
def test_samplers_recover_the_data_distribution_with_the_exact_denoiser(sampler, kw):
    assert _moment_error(sampler, 100, **kw) < 0.03


@pytest.mark.parametrize("sampler,kw", [("ddim", {}), ("dpm++", {}), ("ddpm", {}),
                                        ("ddim", {"eta": 1.0})])
def test_temperature_scales_the_spread_of_gaussian_data_exactly(sampler, kw):
    """With the exact denoiser of N(mu, var) data every update is linear in the noise, so
    starting and injected noise scaled by tau give samples from N(mu, tau^2 var)."""
    mu, var, tau = 1.5, 0.25, 0.5
    net = _gaussian_denoiser(mu, var)
    z_T = tau * jax.random.normal(jax.random.PRNGKey(0), (4000, 4, 8))
    z = samplers.sample(net, z_T, 100, jax.random.PRNGKey(1), sampler=sampler,
                        temperature=tau, **kw)
    assert abs(float(z.mean()) - mu) < 0.01
    assert abs(float(z.var()) - tau ** 2 * var) < 0.005


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
def test_sampler_error_shrinks_as_the_step_count_grows(sampler):
    errors = [_moment_error(sampler, n) for n in (2, 8, 64)]
    assert errors[0] > errors[1] > errors[2], errors


def test_second_order_beats_first_order_at_a_small_budget():
    assert _moment_error("dpm++", 20) < 0.25 * _moment_error("ddim", 20)


@pytest.mark.parametrize("sampler,kw", [("ddpm", {}), ("ddim", {"eta": 1.0}),
                                        ("dpm++", {})])
def test_every_sampler_is_deterministic_for_a_seed(sampler, kw):
    net = _gaussian_denoiser(0.0, 1.0)
    z_T = jax.random.normal(jax.random.PRNGKey(0), (8, 4, 8))

    def run(seed):
        return np.asarray(samplers.sample(net, z_T, 10, jax.random.PRNGKey(seed),
                                          sampler=sampler, **kw))

    assert np.array_equal(run(3), run(3))
    if sampler != "dpm++":  # stochastic samplers depend on the seed beyond z_T
        assert not np.array_equal(run(3), run(4))


def test_one_compile_serves_every_step_budget():
    net = _gaussian_denoiser(0.0, 1.0)
    fn = jax.jit(lambda z, steps: samplers.sample(net, z, steps, jax.random.PRNGKey(0),
                                                  sampler="dpm++"))
    z_T = jnp.ones((2, 4, 8))
    assert np.isfinite(np.asarray(fn(z_T, 1))).all()
    before = compiles()
    for steps in (4, 16, 1000):
        assert np.isfinite(np.asarray(fn(z_T, steps))).all()
    assert compiles() == before


def test_one_step_returns_the_first_clean_estimate():
    mu, var = 0.5, 0.1
    net = _gaussian_denoiser(mu, var)
    z_T = jax.random.normal(jax.random.PRNGKey(0), (16, 4, 8))
    for sampler in samplers.SAMPLERS:
        z = samplers.sample(net, z_T, 1, jax.random.PRNGKey(1), sampler=sampler)
        np.testing.assert_allclose(z, mu, atol=1e-3)  # at t = 1 the best guess is the mean


def test_trajectory_holds_each_steps_estimate():
    net = _gaussian_denoiser(1.0, 0.5)
    z_T = jax.random.normal(jax.random.PRNGKey(0), (4, 4, 8))
    z, est = samplers.sample(net, z_T, 12, jax.random.PRNGKey(1), sampler="ddim",
                             trajectory=True)
    assert est.shape == (12, 4, 4, 8)
    np.testing.assert_allclose(z, samplers.sample(net, z_T, 12, jax.random.PRNGKey(1)),
                               atol=1e-5)
    np.testing.assert_allclose(est[-1], z, atol=1e-3)


def test_partial_denoising_from_t_start_stays_near_the_start():
    net = _gaussian_denoiser(0.0, 1.0)
    x0 = jax.random.normal(jax.random.PRNGKey(0), (4, 4, 8))
    eps = jax.random.normal(jax.random.PRNGKey(1), x0.shape)

    def rms_change(t_start):
        a, s = schedules.alpha_sigma(schedules.logsnr(t_start))
        out = samplers.sample(net, a * x0 + s * eps, 5, jax.random.PRNGKey(2),
                              t_start=t_start)
        return float(jnp.sqrt(jnp.mean((out - x0) ** 2)))

    assert rms_change(0.02) < 0.06  # sigma(0.02) = 0.03 of noise, nothing more
    assert rms_change(1.0) > 1.0  # from pure noise: an unrelated sample


def test_guidance_scales_zero_and_one_are_the_unconditional_and_conditional_outputs():
    cond, uncond = jnp.array([1.0, 2.0]), jnp.array([-1.0, 0.5])
    np.testing.assert_allclose(samplers.guide(cond, uncond, 0.0), uncond)
    np.testing.assert_allclose(samplers.guide(cond, uncond, 1.0), cond)
    np.testing.assert_allclose(samplers.guide(cond, uncond, 2.0), [3.0, 3.5])


@pytest.mark.parametrize("args,match", [(("euler", 4), "unknown sampler"),
                                        (("ddim", 0), "steps must be"),
                                        (("ddim", 1001), "steps must be"),
                                        (("ddim", 2.5), "steps must be"),
                                        (("ddim", 4, "cosine"), "unknown time grid")])
def test_bad_sampler_arguments_are_named(args, match):
    with pytest.raises(ValueError, match=match):
        samplers.check_sampler_args(*args)
