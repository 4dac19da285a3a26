"""The chapter 10 checks accept right implementations and reject typical mistakes."""

import pytest
import torch

from course_code import checks


def precision_weighted_right(mu_hat, logvar_hat, mu_p, logvar_p):
    precision = torch.exp(-logvar_hat) + torch.exp(-logvar_p)
    mu = (mu_hat * torch.exp(-logvar_hat) + mu_p * torch.exp(-logvar_p)) / precision
    return mu, -torch.log(precision)


def precision_weighted_variances_added(mu_hat, logvar_hat, mu_p, logvar_p):  # variances instead of precisions
    mu, _ = precision_weighted_right(mu_hat, logvar_hat, mu_p, logvar_p)
    return mu, torch.log(torch.exp(logvar_hat) + torch.exp(logvar_p))


def precision_weighted_plain_average(mu_hat, logvar_hat, mu_p, logvar_p):  # means not weighted by precision
    _, logvar = precision_weighted_right(mu_hat, logvar_hat, mu_p, logvar_p)
    return (mu_hat + mu_p) / 2, logvar


def precision_weighted_weights_swapped(mu_hat, logvar_hat, mu_p, logvar_p):  # each mean weighted by the other's precision
    precision = torch.exp(-logvar_hat) + torch.exp(-logvar_p)
    return (mu_hat * torch.exp(-logvar_p) + mu_p * torch.exp(-logvar_hat)) / precision, -torch.log(precision)


def precision_weighted_variance_not_log(mu_hat, logvar_hat, mu_p, logvar_p):
    mu, logvar = precision_weighted_right(mu_hat, logvar_hat, mu_p, logvar_p)
    return mu, logvar.exp()


def linear_marginal_right(A, a, var1, W, b, var_x):
    cov1 = A @ A.T + torch.diag(var1)
    return W @ a + b, W @ cov1 @ W.T + torch.diag(var_x)


def linear_marginal_no_layer_noise(A, a, var1, W, b, var_x):  # forgets the noise of z1
    return W @ a + b, W @ A @ A.T @ W.T + torch.diag(var_x)


def linear_marginal_no_pixel_noise(A, a, var1, W, b, var_x):
    return W @ a + b, W @ (A @ A.T + torch.diag(var1)) @ W.T


def linear_marginal_mean_without_a(A, a, var1, W, b, var_x):
    return b, linear_marginal_right(A, a, var1, W, b, var_x)[1]


def test_right_implementations_pass(capsys):
    checks.precision_weighted(precision_weighted_right)
    checks.linear_marginal(linear_marginal_right)
    out = capsys.readouterr().out
    assert "✔ precision_weighted" in out and "✔ linear_marginal" in out


@pytest.mark.parametrize("wrong", [precision_weighted_variances_added, precision_weighted_plain_average,
                                   precision_weighted_weights_swapped, precision_weighted_variance_not_log])
def test_wrong_precision_weighting_fails_with_the_hint(wrong):
    with pytest.raises(checks.CheckFailed, match="precision_weighted") as failure:
        checks.precision_weighted(wrong)
    assert "precisions add" in str(failure.value)


@pytest.mark.parametrize("wrong", [linear_marginal_no_layer_noise, linear_marginal_no_pixel_noise,
                                   linear_marginal_mean_without_a])
def test_wrong_linear_marginal_fails_with_the_hint(wrong):
    with pytest.raises(checks.CheckFailed, match="linear_marginal") as failure:
        checks.linear_marginal(wrong)
    assert "marginalise z₂ first" in str(failure.value)


def test_a_near_miss_in_float32_passes(capsys):
    def float32_answer(mu_hat, logvar_hat, mu_p, logvar_p):
        mu, logvar = precision_weighted_right(*(t.float() for t in (mu_hat, logvar_hat, mu_p, logvar_p)))
        return mu, logvar

    checks.precision_weighted(float32_answer)
    assert "✔ precision_weighted" in capsys.readouterr().out


def test_calling_the_reference_fails():
    from course_code import hierarchical

    with pytest.raises(checks.CheckFailed, match="reference"):
        checks.precision_weighted(lambda *args: hierarchical.precision_weighted(*args))
