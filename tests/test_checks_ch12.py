"""The chapter 12 checks accept right implementations and reject deliberately wrong ones, with the hint that names the fix."""

import math

import pytest
import torch

from course_code import checks


def unlabelled_right(labelled, logits):  # written out: weights and entropy from one normalization
    log_q = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    return (log_q.exp() * (labelled.T - log_q)).sum(-1)


def unlabelled_no_entropy(labelled, logits):
    return (logits.softmax(-1) * labelled.T).sum(-1)


def unlabelled_entropy_subtracted(labelled, logits):
    q = logits.softmax(-1)
    return (q * labelled.T).sum(-1) + (q * q.log()).sum(-1)


def unlabelled_logits_as_probabilities(labelled, logits):
    return (logits * labelled.T).sum(-1)


def unlabelled_uniform_weights(labelled, logits):  # right only when q(y|x) is uniform: a near miss
    return labelled.mean(0) + math.log(labelled.shape[0])


def posterior_right(bounds, log_prior):
    joint = bounds.T + log_prior
    return joint - torch.logsumexp(joint, dim=-1, keepdim=True)


def posterior_by_exp(bounds, log_prior):  # e^-900 underflows to 0: wrong on the last input only
    joint = (bounds.T + log_prior).exp()
    return (joint / joint.sum(-1, keepdim=True)).log()


def posterior_no_prior(bounds, log_prior):
    return bounds.T.log_softmax(-1)


def posterior_not_normalized(bounds, log_prior):
    return bounds.T + log_prior


def posterior_prior_probabilities(bounds, log_prior):  # p(y) added where log p(y) belongs: right when p is uniform
    return (bounds.T + log_prior.exp()).log_softmax(-1)


def test_right_implementations_pass(capsys):
    checks.unlabelled_bound(unlabelled_right)
    checks.class_posterior(posterior_right)
    out = capsys.readouterr().out
    assert "✔ unlabelled_bound" in out and "✔ class_posterior" in out


@pytest.mark.parametrize("wrong", [unlabelled_no_entropy, unlabelled_entropy_subtracted, unlabelled_logits_as_probabilities])
def test_wrong_unlabelled_bound_fails_with_the_hint(wrong):
    with pytest.raises(checks.CheckFailed, match="unlabelled_bound") as failure:
        checks.unlabelled_bound(wrong)
    assert "softmax(logits)" in str(failure.value) and "entropy" in str(failure.value)


def test_missing_entropy_is_named_and_a_near_miss_is_not():
    with pytest.raises(checks.CheckFailed) as failure:
        checks.unlabelled_bound(unlabelled_no_entropy)
    assert "the entropy H(q(y|x)) is missing" in str(failure.value).splitlines()[0]
    for near_miss in (unlabelled_uniform_weights, unlabelled_entropy_subtracted):
        with pytest.raises(checks.CheckFailed) as failure:
            checks.unlabelled_bound(near_miss)
        assert "is missing" not in str(failure.value).splitlines()[0]


@pytest.mark.parametrize("wrong", [posterior_by_exp, posterior_no_prior, posterior_not_normalized, posterior_prior_probabilities])
def test_wrong_class_posterior_fails_with_the_hint(wrong):
    with pytest.raises(checks.CheckFailed, match="class_posterior") as failure:
        checks.class_posterior(wrong)
    assert "log_softmax(-1)" in str(failure.value)


def test_missing_prior_is_named_and_a_near_miss_is_not():
    with pytest.raises(checks.CheckFailed) as failure:
        checks.class_posterior(posterior_no_prior)
    assert "the prior p(y) is left out" in str(failure.value).splitlines()[0]
    with pytest.raises(checks.CheckFailed) as failure:
        checks.class_posterior(posterior_prior_probabilities)
    assert "left out" not in str(failure.value).splitlines()[0]


def test_unattempted_exercise_is_not_a_failure():
    def stub(labelled, logits):
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        checks.unlabelled_bound(stub)
