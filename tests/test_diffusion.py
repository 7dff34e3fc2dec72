"""Schedules, targets and the DDIM sampler (pure functions)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldlm.diffusion import samplers, schedules
from ldlm.diffusion.spec import SamplingSpec
from ldlm.errors import PipelineError
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


def _sample(net, z_T, steps, key, sampler="ddim", eta=0.0, grid="uniform", temperature=1.0,
            **kw):
    spec = SamplingSpec(steps=steps, sampler=sampler, eta=eta, grid=grid,
                        temperature=temperature)
    return samplers.sample(net, z_T, key, spec, **kw)


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
    z = _sample(net, z_T, steps, jax.random.PRNGKey(seed + 1), sampler=sampler, **kw)
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
    z = _sample(net, z_T, 100, jax.random.PRNGKey(1), sampler=sampler, temperature=tau, **kw)
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
        return np.asarray(_sample(net, z_T, 10, jax.random.PRNGKey(seed), sampler=sampler,
                                  **kw))

    assert np.array_equal(run(3), run(3))
    if sampler != "dpm++":  # stochastic samplers depend on the seed beyond z_T
        assert not np.array_equal(run(3), run(4))


def test_one_compile_serves_every_step_budget():
    net = _gaussian_denoiser(0.0, 1.0)
    fn = jax.jit(lambda z, spec: samplers.sample(net, z, jax.random.PRNGKey(0), spec))
    z_T = jnp.ones((2, 4, 8))
    assert np.isfinite(np.asarray(fn(z_T, SamplingSpec(steps=1)))).all()
    before = compiles()
    for steps, eta, temperature in ((4, 0.0, 1.0), (16, 0.5, 0.7), (1000, 1.0, 1.3)):
        spec = SamplingSpec(steps=steps, eta=eta, temperature=temperature)
        assert np.isfinite(np.asarray(fn(z_T, spec))).all()
    assert compiles() == before
    fn(z_T, SamplingSpec(steps=4, sampler="ddim"))  # another sampler: another trace
    assert compiles() == before + 1


def test_one_step_returns_the_first_clean_estimate():
    mu, var = 0.5, 0.1
    net = _gaussian_denoiser(mu, var)
    z_T = jax.random.normal(jax.random.PRNGKey(0), (16, 4, 8))
    for sampler in samplers.SAMPLERS:
        z = _sample(net, z_T, 1, jax.random.PRNGKey(1), sampler=sampler)
        np.testing.assert_allclose(z, mu, atol=1e-3)  # at t = 1 the best guess is the mean


def test_trajectory_holds_each_steps_estimate():
    net = _gaussian_denoiser(1.0, 0.5)
    z_T = jax.random.normal(jax.random.PRNGKey(0), (4, 4, 8))
    z, est = samplers.sample(net, z_T, jax.random.PRNGKey(1), SamplingSpec(sampler="ddim"),
                             trajectory_steps=12)
    assert est.shape == (12, 4, 4, 8)
    np.testing.assert_allclose(z, _sample(net, z_T, 12, jax.random.PRNGKey(1)), atol=1e-5)
    np.testing.assert_allclose(est[-1], z, atol=1e-3)


def test_partial_denoising_from_t_start_stays_near_the_start():
    net = _gaussian_denoiser(0.0, 1.0)
    x0 = jax.random.normal(jax.random.PRNGKey(0), (4, 4, 8))
    eps = jax.random.normal(jax.random.PRNGKey(1), x0.shape)

    def rms_change(t_start):
        a, s = schedules.alpha_sigma(schedules.logsnr(t_start))
        out = _sample(net, a * x0 + s * eps, 5, jax.random.PRNGKey(2), t_start=t_start)
        return float(jnp.sqrt(jnp.mean((out - x0) ** 2)))

    assert rms_change(0.02) < 0.06  # sigma(0.02) = 0.03 of noise, nothing more
    assert rms_change(1.0) > 1.0  # from pure noise: an unrelated sample


def test_guidance_scales_zero_and_one_are_the_unconditional_and_conditional_outputs():
    cond, uncond = jnp.array([1.0, 2.0]), jnp.array([-1.0, 0.5])
    np.testing.assert_allclose(samplers.guide(cond, uncond, 0.0), uncond)
    np.testing.assert_allclose(samplers.guide(cond, uncond, 1.0), cond)
    np.testing.assert_allclose(samplers.guide(cond, uncond, 2.0), [3.0, 3.5])


@pytest.mark.parametrize("kwargs,match", [
    ({"sampler": "euler"}, "unknown sampler 'euler'"), ({"steps": 0}, "steps must be"),
    ({"steps": 1001}, "steps must be"), ({"steps": 2.5}, "steps must be"),
    ({"grid": "cosine"}, "unknown time grid"), ({"temperature": 0}, "temperature must"),
    ({"eta": -1.0}, "eta must"), ({"seed": "1"}, "seed must"),
    ({"guidance": "2"}, "guidance must")])
def test_bad_sampling_settings_are_named_where_the_spec_is_made(kwargs, match):
    with pytest.raises(PipelineError, match=match):
        SamplingSpec(**kwargs)


def test_a_spec_in_a_trace_keeps_its_sampler_static_and_numbers_traced():
    spec = SamplingSpec(steps=8, sampler="ddpm", label=["a", "b"], seed=3)
    leaves, treedef = jax.tree.flatten(spec.traced())
    assert leaves == [8, 0.0, 1.0, 1.0]  # steps, eta, temperature, guidance
    assert jax.tree.unflatten(treedef, leaves) == spec.replace(label=None, seed=0)
    assert spec.label == ("a", "b")  # hashable
