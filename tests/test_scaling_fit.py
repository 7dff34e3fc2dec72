"""The scaling study's fit (benchmarks/scaling.py): lines on log axes through hand-made
points, and where two lines meet."""

import math
import sys
import pathlib

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import scaling  # noqa: E402


def _points(a, b, noise=(0.0, 0.0, 0.0)):
    return [(10 ** x, 10 ** (a + b * x + e)) for x, e in zip((12, 13, 14), noise)]


def test_a_line_through_exact_points_is_recovered():
    fit = scaling.fit_line(_points(4.0, -0.15))
    assert fit["a"] == pytest.approx(4.0) and fit["b"] == pytest.approx(-0.15)
    assert fit["b_se"] == pytest.approx(0.0, abs=1e-9)
    assert scaling.fit_line(_points(4.0, -0.15)[:1]) is None
    two = scaling.fit_line(_points(4.0, -0.15)[:2])
    assert two["b"] == pytest.approx(-0.15) and two["cov"] is None


def test_converging_lines_meet_where_the_algebra_says():
    # ldlm 10^(5 - 0.2x), AR 10^(3 - 0.05x): equal at x = 2 / 0.15
    ldlm = scaling.fit_line(_points(5.0, -0.2, (0.01, -0.02, 0.01)))
    ar = scaling.fit_line(_points(3.0, -0.05, (-0.01, 0.02, -0.01)))
    meet = scaling.meeting_point(ldlm, ar)
    assert meet["converge"]
    assert meet["log10_flops"] == pytest.approx((ar["a"] - ldlm["a"]) / (ldlm["b"] - ar["b"]))
    assert meet["log10_flops"] == pytest.approx(2 / 0.15, abs=0.5)
    assert 0.5 < meet["fraction_converging"] <= 1
    assert meet["log10_flops_16"] < meet["log10_flops_median"] < meet["log10_flops_84"]


def test_diverging_lines_do_not_meet():
    ldlm = scaling.fit_line(_points(5.0, -0.01))
    ar = scaling.fit_line(_points(3.0, -0.1))
    meet = scaling.meeting_point(ldlm, ar)
    assert meet["converge"] is False and "log10_flops" not in meet
    assert math.isclose(meet["fraction_converging"], 0.0)
