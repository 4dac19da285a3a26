"""Every diagnosis a check gives, tested with the mistake it names and with near misses that must not get it.

A diagnosis is a claim about the learner's function ("it is twice the expected value: is a factor ½
missing?"), so it must be made only when the mistake's signature holds on every input of the check.
Each row of MISTAKES is a wrong implementation and the words its verdict must contain; each row of
NEAR_MISSES a wrong implementation that resembles a mistake on some inputs only, and the words its
verdict must not contain. The right implementations here are written independently of the references.
"""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from course_code import checks, distributions


def kl_prior(mu, logvar):
    return 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)


def kl_gauss(mu_q, logvar_q, mu_p, logvar_p):
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)


def kl_table(p, q):
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1)


def pathwise(f, mu, sigma, eps):
    z = (mu + sigma * eps).detach().requires_grad_(True)
    return torch.autograd.grad(f(z).sum(), z)[0]


def score(f, mu, sigma, eps):
    z = mu + sigma * eps
    return f(z) * (z - mu) / sigma**2


def gaussian_loglik(x, x_hat):
    return -0.5 * x.shape[-1] * math.log(2 * math.pi) - 0.5 * ((x - x_hat) ** 2).sum(-1)


def elbo_samples(log_lik, x, z, mu, logvar):
    return (log_lik(x, z) + distributions.log_standard_normal(z) - distributions.log_normal(z, mu, logvar)).mean(0)


def fixed_noise(log_lik, x, mu, logvar, eps):
    return log_lik(x, mu + torch.exp(0.5 * logvar) * eps).mean(0) - kl_prior(mu, logvar)


def gaps(log_px, elbo_best, elbo_amortized):
    g = torch.stack([log_px - elbo_best, elbo_best - elbo_amortized, log_px - elbo_amortized])
    return torch.stack([g.mean(1), g.std(1) / len(log_px) ** 0.5], dim=1)


def free_bits(mu, logvar, free_bits):
    return (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).mean(0).clamp(min=free_bits).sum()


def on_one_input(right, wrong, number=1):
    """``wrong`` on the check's input ``number`` (counted from 1), ``right`` on the others: a mistake seen on one input only."""
    calls = []

    def fn(*args):
        calls.append(1)
        return (wrong if len(calls) == number else right)(*args)

    return fn


MISTAKES = {
    # chapter 1
    "loglik: no normalizer": (checks.gaussian_log_likelihood, lambda x, x_hat: -0.5 * ((x - x_hat) ** 2).sum(-1),
                              "the normalizing constant −(D/2)·log(2π) is missing"),
    "loglik: mean over pixels": (checks.gaussian_log_likelihood, lambda x, x_hat: gaussian_loglik(x, x_hat) / x.shape[-1],
                                 "a mean over the last axis where the sum belongs"),
    "loglik: no ½ on the error": (checks.gaussian_log_likelihood,
                                  lambda x, x_hat: gaussian_loglik(x, x_hat) - 0.5 * ((x - x_hat) ** 2).sum(-1),
                                  "the factor ½ of the squared error is missing"),
    "kl_discrete: swapped": (checks.kl_discrete, lambda p, q: kl_table(q, p), "with its arguments swapped (p with q)"),
    "noise: divided by N": (checks.best_noise_variance, lambda x, x_hat: ((x - x_hat) ** 2).sum() / len(x),
                            "S / N, the squared error per datapoint"),
    "noise: a standard deviation": (checks.best_noise_variance, lambda x, x_hat: ((x - x_hat) ** 2).mean().sqrt(),
                                    "a standard deviation"),
    "rescaling: the other way": (checks.map_rescaling, lambda weight, z, c: (weight * c, z / c), "the codes must shrink"),
    # chapter 2
    "kl_normal: swapped": (checks.kl_normal, lambda mu_q, logvar_q, mu_p, logvar_p: kl_gauss(mu_p, logvar_p, mu_q, logvar_q),
                           "with its arguments swapped (mu_q with mu_p, logvar_q with logvar_p)"),
    "kl_normal: mean": (checks.kl_normal, lambda mu_q, logvar_q, mu_p, logvar_p:
                        kl_gauss(mu_q, logvar_q, mu_p, logvar_p) / mu_q.shape[-1], "a mean over the last axis"),
    "kl_normal: sign": (checks.kl_normal, lambda *a: -kl_gauss(*a), "the opposite of the expected value"),
    "kl prior: σ for σ²": (checks.kl_standard_normal, lambda mu, logvar: 0.5 * (mu**2 + (0.5 * logvar).exp() - 1 - logvar).sum(-1),
                           "σ = exp(½·logvar) where σ² = exp(logvar) belongs"),
    "kl prior: missing ½": (checks.kl_standard_normal, lambda mu, logvar: 2 * kl_prior(mu, logvar), "is a factor ½ missing?"),
    "elbo: sum over samples": (checks.elbo_from_samples, lambda log_lik, x, z, mu, logvar: z.shape[0] * elbo_samples(log_lik, x, z, mu, logvar),
                               "the sum over the K samples where their average belongs"),
    "elbo: signs of the z terms": (checks.elbo_from_samples, lambda log_lik, x, z, mu, logvar: (
        log_lik(x, z) - distributions.log_standard_normal(z) + distributions.log_normal(z, mu, logvar)).mean(0),
        "the signs of the two log-densities of z are exchanged"),
    "elbo: reconstruction only": (checks.elbo_from_samples, lambda log_lik, x, z, mu, logvar: log_lik(x, z).mean(0),
                                  "the terms log p(z) − log q(z|x) are missing"),
    "elbo: no average": (checks.elbo_from_samples, lambda log_lik, x, z, mu, logvar: (
        log_lik(x, z) + distributions.log_standard_normal(z) - distributions.log_normal(z, mu, logvar)),
        "it has an extra axis 0"),
    "diagonal: marginal variances": (checks.best_diagonal_variances, lambda cov: torch.diagonal(cov), "the marginal variances Σ_jj"),
    "diagonal: precisions": (checks.best_diagonal_variances, lambda cov: torch.linalg.inv(cov).diagonal(),
                             "the precisions Λ_jj themselves"),
    # chapter 3
    "score: σ, not σ²": (checks.score_function_gradient, lambda f, mu, sigma, eps: score(f, mu, sigma, eps) * sigma,
                         "divide by the variance σ², not by σ"),
    "score: f'": (checks.score_function_gradient, lambda f, mu, sigma, eps: pathwise(f, mu, sigma, eps) * eps / sigma,
                  "not its derivative"),
    "score: sign": (checks.score_function_gradient, lambda *a: -score(*a), "is a sign flipped?"),
    "pathwise: averaged": (checks.pathwise_gradient, lambda *a: pathwise(*a).mean(0),
                           "the sample axis 0 (one estimate per row of eps), of size 3, is missing"),
    "pathwise: f, not f'": (checks.pathwise_gradient, lambda f, mu, sigma, eps: f(mu + sigma * eps),
                            "f(z) itself where its derivative f'(z) belongs"),
    "pathwise: unscaled noise": (checks.pathwise_gradient, lambda f, mu, sigma, eps: pathwise(f, mu, 1.0, eps),
                                 "the noise is not scaled by σ"),
    "sigma: second moments": (checks.sigma_gradient_variances, lambda mu, sigma: (
        4 * mu**2 + 12 * sigma**2, 2 * mu**4 / sigma**2 + 60 * mu**2 + 78 * sigma**2), "the second moments, not the variances"),
    "baseline: E[f]": (checks.best_baseline, lambda mu, sigma: (mu**2 + sigma**2, 8 * mu**2 + 10 * sigma**2),
                       "not the best constant b*"),
    "baseline: variance ×2": (checks.best_baseline, lambda mu, sigma: (mu**2 + 3 * sigma**2, 16 * mu**2 + 12 * sigma**2),
                              "in returned value number 2, it is twice the expected value"),
    "lognormal: closed form": (checks.lognormal_gradients, lambda mu, sigma, eps: (
        torch.exp(mu + sigma**2 / 2), sigma * torch.exp(mu + sigma**2 / 2)), "the derivatives of the closed form"),
    "lognormal: ∂σ = ∂μ": (checks.lognormal_gradients, lambda mu, sigma, eps: (torch.exp(mu + sigma * eps).mean(),) * 2,
                           "∂z/∂σ = z·ε, not z"),
    # chapter 4
    "bernoulli: mean": (checks.log_bernoulli_logits, lambda x, logits: (x * logits - F.softplus(logits)).mean(-1),
                        "a mean over the last axis"),
    "iwae: no − log K": (checks.iwae_from_log_weights, lambda log_w: torch.logsumexp(log_w, 0), "the − log K of the average is missing"),
    "iwae: the ELBO": (checks.iwae_from_log_weights, lambda log_w: log_w.mean(0), "the average of the log-weights"),
    "k1: variance for σ": (checks.log_weight_and_analytic_elbo, lambda log_lik, x, mu, logvar, eps: (
        log_lik(x, mu + logvar.exp() * eps) + distributions.log_standard_normal(mu + logvar.exp() * eps)
        - distributions.log_normal(mu + logvar.exp() * eps, mu, logvar),
        log_lik(x, mu + logvar.exp() * eps) - kl_prior(mu, logvar)), "not by the variance"),
    # chapter 5
    "fixed noise: variance for σ": (checks.fixed_noise_elbo, lambda log_lik, x, mu, logvar, eps:
                                    log_lik(x, mu + logvar.exp() * eps).mean(0) - kl_prior(mu, logvar), "not by the variance"),
    "fixed noise: sum over samples": (checks.fixed_noise_elbo, lambda log_lik, x, mu, logvar, eps:
                                      log_lik(x, mu + torch.exp(0.5 * logvar) * eps).sum(0) - kl_prior(mu, logvar),
                                      "the sum of log p(x|z) over the K samples"),
    "fixed noise: no KL": (checks.fixed_noise_elbo, lambda log_lik, x, mu, logvar, eps:
                           log_lik(x, mu + torch.exp(0.5 * logvar) * eps).mean(0), "the KL to the prior is not subtracted"),
    "gaps: transposed": (checks.gap_summary, lambda *a: gaps(*a).T, "is it transposed?"),
    "gaps: n in the std": (checks.gap_summary, lambda *a: torch.stack([torch.stack(
        [a[0] - a[1], a[1] - a[2], a[0] - a[2]]).mean(1), torch.stack([a[0] - a[1], a[1] - a[2], a[0] - a[2]]).std(1, correction=0)
        / len(a[0]) ** 0.5], 1), "use n − 1"),
    "gaps: standard deviations": (checks.gap_summary, lambda *a: gaps(*a) * torch.tensor([1.0, len(a[0]) ** 0.5]),
                                  "divide them by √n"),
    "linear encoder: marginal variances": (checks.linear_encoder, lambda x, W, b, var_x: (
        (x - b) @ W @ torch.linalg.inv(torch.eye(W.shape[1]) + W.T @ W / var_x) / var_x,
        torch.linalg.inv(torch.eye(W.shape[1]) + W.T @ W / var_x).diagonal().log().expand(len(x), -1)),
        "the marginal log-variances log Σ_jj"),
    "standardize: K − 1": (checks.standardize, lambda eps: (eps - eps.mean(0)) / eps.std(0), "with K − 1 in the denominator"),
    "standardize: not centred": (checks.standardize, lambda eps: eps / eps.pow(2).mean(0).sqrt(), "without subtracting the mean"),
    "difference: summed errors": (checks.difference_of_means, lambda a, b: (
        a.mean() - b.mean(), a.std() / len(a) ** 0.5 + b.std() / len(b) ** 0.5), "the sum of the two standard errors"),
    "difference: no 1/n": (checks.difference_of_means, lambda a, b: (a.mean() - b.mean(), (a.var() + b.var()).sqrt()),
                           "without dividing each by its sample size"),
    # chapter 6
    "free bits: per datapoint": (checks.free_bits_kl, lambda mu, logvar, free_bits: (
        0.5 * (mu**2 + logvar.exp() - 1 - logvar)).clamp(min=free_bits).mean(0).sum(), "applied to each datapoint's KL"),
    "free bits: on the total": (checks.free_bits_kl, lambda mu, logvar, free_bits: (
        0.5 * (mu**2 + logvar.exp() - 1 - logvar)).mean(0).sum().clamp(min=free_bits), "applied to the total KL"),
    # chapter 11
    "gaps: not normalized": (checks.information_gaps, lambda information, entropy: (
        information.sort(0, descending=True).values[0] - information.sort(0, descending=True).values[1]),
        "not divided by the factor's entropy"),
    "gaps: largest minus smallest": (checks.information_gaps, lambda information, entropy: (
        information.max(0).values - information.min(0).values) / entropy, "where the second largest belongs"),
    "gaussian tc: standard deviations": (checks.gaussian_total_correlation, lambda cov: 0.5 * (
        0.5 * cov.diagonal(dim1=-2, dim2=-1).log().sum(-1) - torch.logdet(cov)), "with the variances' square roots"),
    # chapter 13
    "gumbel-softmax: τ on the logits only": (checks.gumbel_softmax_sample, lambda logits, noise, temperature: torch.softmax(
        logits / temperature + noise, dim=-1), "the logits divided by the temperature and the noise not"),
    "quantize: largest dot product": (checks.quantize_vectors, lambda z_e, codebook: codebook[(z_e @ codebook.T).argmax(-1)],
                                      "the largest dot product, not the smallest distance"),
    # chapter 12
    "unlabelled bound: no entropy": (checks.unlabelled_bound, lambda labelled, logits: (logits.softmax(-1) * labelled.T).sum(-1),
                                     "the entropy H(q(y|x)) is missing"),
    "class posterior: no prior": (checks.class_posterior, lambda bounds, log_prior: bounds.T.log_softmax(-1),
                                  "the prior p(y) is left out"),
}

NEAR_MISSES = {
    # twice the reference on the first input only (σ = 2 there in the old inputs): not a missing ½
    "score: twice on one input": (checks.score_function_gradient, on_one_input(score, lambda *a: 2 * score(*a)), "factor ½"),
    "kl prior: twice on one input": (checks.kl_standard_normal, on_one_input(kl_prior, lambda *a: 2 * kl_prior(*a), 2),
                                     "factor ½"),
    # swapping only the means is a different mistake from swapping the two distributions
    "kl_normal: means swapped only": (checks.kl_normal, lambda mu_q, logvar_q, mu_p, logvar_p: kl_gauss(mu_p, logvar_q, mu_q, logvar_p)
                                      + 0.1, "swapped"),
    "kl_discrete: swapped and halved": (checks.kl_discrete, lambda p, q: 0.5 * kl_table(q, p), "swapped"),
    # a constant ½ is not a mean over the last axis (whose size differs between inputs)
    "kl prior: halved": (checks.kl_standard_normal, lambda *a: 0.5 * kl_prior(*a), "a mean over the last axis"),
    "kl_normal: halved": (checks.kl_normal, lambda *a: 0.5 * kl_gauss(*a), "a mean over the last axis"),
    # dividing by σ on one input only
    "score: σ on one input": (checks.score_function_gradient,
                              on_one_input(score, lambda f, mu, sigma, eps: score(f, mu, sigma, eps) * sigma), "divide by the variance"),
    # summing over the last axis loses axis 1 on some inputs and axis 2 on another: not one named axis
    "pathwise: summed over the last axis": (checks.pathwise_gradient, lambda *a: pathwise(*a).sum(-1), "is missing"),
    # summing over every axis is not "the datapoint axis is missing"
    "kl prior: summed over everything": (checks.kl_standard_normal, lambda *a: kl_prior(*a).sum(), "is missing"),
    "gaps: standard errors only": (checks.gap_summary, lambda *a: gaps(*a)[:, 1], "transposed"),
    "difference: one standard error": (checks.difference_of_means, lambda a, b: (a.mean() - b.mean(), a.std() / len(a) ** 0.5),
                                       "the sum of the two"),
    "standardize: nothing done": (checks.standardize, lambda eps: eps, "K − 1"),
    "free bits: no floor": (checks.free_bits_kl, lambda mu, logvar, free_bits: (
        0.5 * (mu**2 + logvar.exp() - 1 - logvar)).mean(0).sum(), "applied to"),
    "elbo: average over datapoints": (checks.elbo_from_samples, lambda *a: elbo_samples(*a).mean(), "extra axis"),
    # chapter 12: uniform weights match "no entropy" only where q(y|x) is uniform; p(y) for log p(y) only where p is uniform
    "unlabelled bound: uniform weights": (checks.unlabelled_bound, lambda labelled, logits: labelled.mean(0), "is missing"),
    "class posterior: p(y) for log p(y)": (checks.class_posterior, lambda bounds, log_prior: (
        bounds.T + log_prior.exp()).log_softmax(-1), "left out"),
}


@pytest.mark.parametrize("name", MISTAKES)
def test_a_mistake_gets_its_diagnosis(name):
    check, wrong, words = MISTAKES[name]
    with pytest.raises(checks.CheckFailed) as failure:
        check(wrong)
    assert words in str(failure.value).splitlines()[0], str(failure.value)


@pytest.mark.parametrize("name", NEAR_MISSES)
def test_a_near_miss_gets_no_diagnosis_it_does_not_deserve(name):
    check, wrong, words = NEAR_MISSES[name]
    with pytest.raises(checks.CheckFailed) as failure:
        check(wrong)
    assert words not in str(failure.value).splitlines()[0], str(failure.value)


def test_every_diagnosis_of_every_check_is_tested(monkeypatch):
    """Each mistake a check can name (its ``mistakes`` and ``swaps``) is triggered by a row of MISTAKES."""
    named = {}

    def record(name, fn, reference, cases, hint="", mistakes=(), swaps=(), **options):
        named.update({words: name for words, _ in mistakes})
        if swaps:
            named[f"arguments swapped ({', '.join(f'{a} with {b}' for a, b in swaps)})"] = name

    monkeypatch.setattr(checks, "compare", record)
    monkeypatch.setattr(checks, "verify", lambda *args, **kwargs: None)  # graded assertions name no mistake
    for name in dir(checks):
        function = getattr(checks, name)
        if inspect.isfunction(function) and function.__module__ == checks.__name__ and not name.startswith("_"):
            if "fn" in inspect.signature(function).parameters and name not in ("run_case", "verify", "compare"):
                function(lambda *a: None)
    tested = [words for _, _, words in MISTAKES.values()]
    untested = {words: check for words, check in named.items() if not any(t in words or words in t for t in tested)}
    assert len(named) >= 30 and not untested, f"diagnoses without a wrong implementation in MISTAKES: {untested}"
