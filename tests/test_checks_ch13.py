"""The chapter 13 checks accept right implementations and reject wrong ones, naming a mistake only when it is made on every input."""

import pytest
import torch

from course_code import checks


def gumbel_softmax_right(logits, noise, temperature):
    scaled = (logits + noise) / temperature
    weights = torch.exp(scaled - scaled.max(-1, keepdim=True).values)
    return weights / weights.sum(-1, keepdim=True)


def gumbel_softmax_logits_only(logits, noise, temperature):  # τ applied to the logits alone
    return torch.softmax(logits / temperature + noise, dim=-1)


def gumbel_softmax_wrong_axis(logits, noise, temperature):  # normalized over the draws instead of the categories
    return torch.softmax((logits + noise) / temperature, dim=0)


def gumbel_softmax_no_temperature(logits, noise, temperature):
    return torch.softmax(logits + noise, dim=-1)


def quantize_right(z_e, codebook):
    distances = torch.cdist(z_e.reshape(-1, z_e.shape[-1]), codebook)
    return codebook[distances.argmin(-1)].reshape(z_e.shape)


def quantize_dot_product(z_e, codebook):
    return codebook[(z_e @ codebook.T).argmax(-1)]


def quantize_farthest(z_e, codebook):
    return codebook[((z_e[..., None, :] - codebook) ** 2).sum(-1).argmax(-1)]


def quantize_indices(z_e, codebook):  # the indices where the vectors belong
    return ((z_e[..., None, :] - codebook) ** 2).sum(-1).argmin(-1)


def on_one_input(right, wrong, number):
    calls = []

    def fn(*args):
        calls.append(1)
        return (wrong if len(calls) == number else right)(*args)

    return fn


def test_right_implementations_pass(capsys):
    checks.gumbel_softmax_sample(gumbel_softmax_right)
    checks.quantize_vectors(quantize_right)
    out = capsys.readouterr().out
    assert "✔ gumbel_softmax_sample" in out and "✔ quantize_vectors" in out


@pytest.mark.parametrize("wrong", [gumbel_softmax_logits_only, gumbel_softmax_wrong_axis, gumbel_softmax_no_temperature])
def test_wrong_gumbel_softmax_fails_with_the_hint(wrong):
    with pytest.raises(checks.CheckFailed, match="gumbel_softmax_sample") as failure:
        checks.gumbel_softmax_sample(wrong)
    assert "divide the sum by the temperature" in str(failure.value)


@pytest.mark.parametrize("wrong", [quantize_dot_product, quantize_farthest, quantize_indices])
def test_wrong_quantize_fails_with_the_hint(wrong):
    with pytest.raises(checks.CheckFailed, match="quantize_vectors") as failure:
        checks.quantize_vectors(wrong)
    assert "argmin over K" in str(failure.value)


def test_each_mistake_gets_its_diagnosis():
    with pytest.raises(checks.CheckFailed) as failure:
        checks.gumbel_softmax_sample(gumbel_softmax_logits_only)
    assert "the noise not: divide their sum by τ" in str(failure.value).splitlines()[0]
    with pytest.raises(checks.CheckFailed) as failure:
        checks.quantize_vectors(quantize_dot_product)
    assert "largest dot product, not the smallest distance" in str(failure.value).splitlines()[0]


@pytest.mark.parametrize("check, right, wrong, words", [
    (checks.gumbel_softmax_sample, gumbel_softmax_right, gumbel_softmax_logits_only, "the noise not"),
    (checks.quantize_vectors, quantize_right, quantize_dot_product, "dot product"),
])
def test_a_mistake_on_one_input_only_gets_no_diagnosis(check, right, wrong, words):
    with pytest.raises(checks.CheckFailed) as failure:
        check(on_one_input(right, wrong, 2))
    assert words not in str(failure.value).splitlines()[0]
