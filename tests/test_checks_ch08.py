"""The chapter 8 checks accept right implementations and reject deliberately wrong ones, with the right words."""

import math

import pytest
import torch
from torch.nn import functional as F

from course_code import checks


def log_normal_full_right(x, mu, scale_tril):
    r = torch.linalg.solve_triangular(scale_tril, (x - mu)[..., None], upper=False)[..., 0]
    log_det = 2 * torch.log(torch.diagonal(scale_tril, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * (x.shape[-1] * math.log(2 * math.pi) + log_det + (r**2).sum(-1))


def log_normal_full_half_log_det(x, mu, scale_tril):  # log det L where log det LLᵀ belongs
    r = torch.linalg.solve_triangular(scale_tril, (x - mu)[..., None], upper=False)[..., 0]
    log_det = torch.log(torch.diagonal(scale_tril, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * (x.shape[-1] * math.log(2 * math.pi) + log_det + (r**2).sum(-1))


def log_normal_full_upper(x, mu, scale_tril):  # Lᵀ⁻¹ instead of L⁻¹
    r = torch.linalg.solve_triangular(scale_tril.transpose(-2, -1), (x - mu)[..., None], upper=True)[..., 0]
    log_det = 2 * torch.log(torch.diagonal(scale_tril, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * (x.shape[-1] * math.log(2 * math.pi) + log_det + (r**2).sum(-1))


def log_normal_full_negated(x, mu, scale_tril):
    return -log_normal_full_right(x, mu, scale_tril)


def planar_right(z, u, w, b):
    wu = (w * u).sum(-1, keepdim=True)
    u_hat = u + (F.softplus(wu) - 1 - wu) * w / (w**2).sum(-1, keepdim=True)
    t = torch.tanh(z @ w + b)
    return z + u_hat * t[..., None], torch.log(1 + (1 - t**2) * (w * u_hat).sum(-1))


def planar_without_constraint(z, u, w, b):  # u used as it is: the step can fold space
    t = torch.tanh(z @ w + b)
    return z + u * t[..., None], torch.log((1 + (1 - t**2) * (w * u).sum(-1)).abs())


def planar_log_det_without_derivative(z, u, w, b):  # tanh where its derivative 1 − tanh² belongs
    z_new, _ = planar_right(z, u, w, b)
    wu = (w * u).sum(-1, keepdim=True)
    u_hat = u + (F.softplus(wu) - 1 - wu) * w / (w**2).sum(-1, keepdim=True)
    return z_new, torch.log((1 + torch.tanh(z @ w + b) * (w * u_hat).sum(-1)).abs())


def test_right_implementations_pass(capsys):
    checks.log_normal_full(log_normal_full_right)
    checks.planar(planar_right)
    out = capsys.readouterr().out
    assert "✔ log_normal_full" in out and "✔ planar" in out


@pytest.mark.parametrize("wrong", [log_normal_full_half_log_det, log_normal_full_upper])
def test_wrong_log_normal_full_fails_without_a_false_diagnosis(wrong):
    with pytest.raises(checks.CheckFailed, match="log_normal_full: its values differ from the reference") as failure:
        checks.log_normal_full(wrong)
    assert "sign flipped" not in str(failure.value) and "hint: whiten the residual" in str(failure.value)


def test_a_negated_log_density_is_diagnosed_as_a_flipped_sign():
    with pytest.raises(checks.CheckFailed, match="is a sign flipped"):
        checks.log_normal_full(log_normal_full_negated)


@pytest.mark.parametrize("wrong", [planar_without_constraint, planar_log_det_without_derivative])
def test_wrong_planar_fails(wrong):
    with pytest.raises(checks.CheckFailed, match="planar: in returned value number") as failure:
        checks.planar(wrong)
    assert "invertible" in str(failure.value)


def test_planar_calling_the_reference_fails():
    from course_code import flows

    with pytest.raises(checks.CheckFailed, match="calls the reference implementation"):
        checks.planar(lambda z, u, w, b: flows.planar(z, u, w, b))


def test_unattempted_exercise_is_not_a_failure():
    def stub(x, mu, scale_tril):
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        checks.log_normal_full(stub)


def planar_slope_right(z, u):
    return 1 + u * (1 - torch.tanh(z) ** 2)


def planar_slope_corrected(z, u):  # û where the exercise asks for u as it is given
    u = torch.as_tensor(u)
    u_hat = u + F.softplus(u) - 1 - u
    return 1 + u_hat * (1 - torch.tanh(z) ** 2)


def planar_slope_without_derivative(z, u):  # tanh where its derivative 1 − tanh² belongs
    return 1 + u * torch.tanh(z)


def test_planar_slope_passes_the_right_slope(capsys):
    checks.planar_slope(planar_slope_right)
    assert "✔ planar_slope" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", [planar_slope_corrected, planar_slope_without_derivative])
def test_wrong_planar_slope_fails_with_the_hint(wrong):
    with pytest.raises(checks.CheckFailed, match="planar_slope: its values differ from the reference") as failure:
        checks.planar_slope(wrong)
    assert "hint: d/dz tanh z" in str(failure.value)
