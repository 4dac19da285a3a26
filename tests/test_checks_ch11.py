"""The chapter 11 checks accept right implementations and reject typical mistakes."""

import pytest
import torch

from course_code import checks


def gaps_right(information, entropy):
    ordered = information.sort(dim=0, descending=True).values
    return (ordered[0] - ordered[1]) / entropy


def gaps_not_normalized(information, entropy):
    return gaps_right(information, entropy) * entropy


def gaps_largest_minus_smallest(information, entropy):
    return (information.max(0).values - information.min(0).values) / entropy


def gaps_over_factors(information, entropy):  # the gap taken along the wrong axis
    ordered = information.sort(dim=1, descending=True).values
    return ordered[:, 0] - ordered[:, 1]


def tc_right(cov):
    return 0.5 * (torch.log(torch.diagonal(cov, dim1=-2, dim2=-1)).sum(-1) - torch.logdet(cov))


def tc_no_half(cov):
    return 2 * tc_right(cov)


def tc_standard_deviations(cov):
    return 0.5 * (0.5 * torch.log(torch.diagonal(cov, dim1=-2, dim2=-1)).sum(-1) - torch.logdet(cov))


def tc_sign(cov):
    return -tc_right(cov)


def test_right_implementations_pass(capsys):
    checks.information_gaps(gaps_right)
    checks.gaussian_total_correlation(tc_right)
    out = capsys.readouterr().out
    assert "✔ information_gaps" in out and "✔ gaussian_total_correlation" in out


@pytest.mark.parametrize("wrong, words", [
    (gaps_not_normalized, "not divided by the factor's entropy"),
    (gaps_largest_minus_smallest, "the second largest belongs"),
    (gaps_over_factors, "sort the column over the latent dimensions"),
])
def test_wrong_gaps_fail_with_the_diagnosis_or_the_hint(wrong, words):
    with pytest.raises(checks.CheckFailed, match="information_gaps") as failure:
        checks.information_gaps(wrong)
    assert words in str(failure.value)


@pytest.mark.parametrize("wrong, words", [
    (tc_no_half, "twice"),
    (tc_standard_deviations, "square roots"),
    (tc_sign, "opposite"),
])
def test_wrong_total_correlations_fail_with_the_diagnosis(wrong, words):
    with pytest.raises(checks.CheckFailed, match="gaussian_total_correlation") as failure:
        checks.gaussian_total_correlation(wrong)
    assert words in str(failure.value).splitlines()[0]


def test_near_misses_get_no_diagnosis():
    # unnormalized on the first input only: not "not divided by the entropy"
    calls = []

    def once_unnormalized(information, entropy):
        calls.append(1)
        return (gaps_not_normalized if len(calls) == 1 else gaps_right)(information, entropy)

    with pytest.raises(checks.CheckFailed) as failure:
        checks.information_gaps(once_unnormalized)
    assert "not divided" not in str(failure.value).splitlines()[0]
    with pytest.raises(checks.CheckFailed) as failure:  # off by a constant: no named mistake
        checks.gaussian_total_correlation(lambda cov: tc_right(cov) + 0.1)
    assert "square roots" not in str(failure.value).splitlines()[0]


def test_a_float32_answer_passes(capsys):
    checks.gaussian_total_correlation(lambda cov: tc_right(cov.float()))
    checks.information_gaps(lambda information, entropy: gaps_right(information.float(), entropy.float()))
    assert capsys.readouterr().out.count("✔") == 2


def test_calling_the_reference_fails():
    from course_code import disentanglement

    with pytest.raises(checks.CheckFailed, match="reference"):
        checks.gaussian_total_correlation(lambda cov: disentanglement.gaussian_total_correlation(cov))
