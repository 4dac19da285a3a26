"""The check mechanism (course_code.checks: compare and its verdicts) and the KL check.

Every wrong implementation a learner is likely to write must fail with a verdict that says what
went wrong; the right one, and an independent one from torch.distributions, must pass.
"""

import json

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from course_code import checks


def kl_right(mu, logvar):
    return 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)


def kl_from_torch(mu, logvar):
    q, p = Normal(mu, (0.5 * logvar).exp()), Normal(torch.zeros_like(mu), torch.ones_like(mu))
    return kl_divergence(q, p).sum(-1)


WRONG = {
    "wrong sign": (lambda mu, logvar: -kl_right(mu, logvar), "the opposite of the expected value: is a sign flipped?"),
    "missing ½": (lambda mu, logvar: 2 * kl_right(mu, logvar), "twice the expected value: is a factor ½ missing?"),
    "mean, not sum": (lambda mu, logvar: 0.5 * (mu**2 + logvar.exp() - 1 - logvar).mean(-1), "it is a mean over the last axis where the sum belongs"),
    "sum over the batch axis": (lambda mu, logvar: 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(0),
                                "it returned shape (2,) instead of (1,): check which axes you sum or average over"),
    "no sum": (lambda mu, logvar: 0.5 * (mu**2 + logvar.exp() - 1 - logvar),
               "shape (1, 1) instead of (1,): did you forget to sum over the last axis?"),
    "sum over everything": (lambda mu, logvar: 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(),
                            "shape () instead of (1,): did you sum or average over every axis?"),
    "kept dimension": (lambda mu, logvar: kl_right(mu, logvar)[:, None], "shape (1, 1) instead of (1,)"),
    "logvar read as a variance": (lambda mu, logvar: 0.5 * (mu**2 + logvar - 1 - logvar.log()).sum(-1),
                                  "it returned inf at index (0,), where the expected value is finite"),
    "σ for σ²": (lambda mu, logvar: 0.5 * (mu**2 + (0.5 * logvar).exp() - 1 - logvar).sum(-1),
                 "it is σ = exp(½·logvar) where σ² = exp(logvar) belongs"),
    "raises": (lambda mu, logvar: mu / "2", "your function raised TypeError"),
    "returns a list": (lambda mu, logvar: kl_right(mu, logvar).tolist(), "it returned a list, not a torch tensor"),
    "returns numpy": (lambda mu, logvar: kl_right(mu, logvar).numpy(), "it returned a numpy.ndarray, not a torch tensor"),
    "returns None": (lambda mu, logvar: None, "it returned None, not a torch tensor"),
}


@pytest.mark.parametrize("fn", [kl_right, kl_from_torch, lambda m, lv: kl_right(m, lv).double()],
                         ids=["formula", "torch.distributions", "float64, other names"])
def test_right_kl_passes(fn, capsys):
    checks.kl_standard_normal(fn)
    assert capsys.readouterr().out == "✔ kl_standard_normal: passed on 5 inputs\n"


@pytest.mark.parametrize("mistake", WRONG)
def test_wrong_kl_fails_saying_why(mistake):
    fn, why = WRONG[mistake]
    with pytest.raises(checks.CheckFailed) as failure:
        checks.kl_standard_normal(fn)
    message = str(failure.value)
    assert message.startswith("kl_standard_normal: ") and why in message
    assert "\n  on input " in message and "\n  hint: KL = ½ Σ_j" in message
    if "raised" not in why:
        assert "\n  expected: " in message and "\n  obtained: " in message


def test_verdict_shows_the_input_and_both_values():
    with pytest.raises(checks.CheckFailed) as failure:
        checks.kl_standard_normal(WRONG["missing ½"][0])
    assert str(failure.value).splitlines()[1:4] == [
        "  on input 2 of 5: mu=[[1.5, -2.0]], logvar=[[0.0, 0.0]]",
        "  expected: [3.125]",
        "  obtained: [6.25]",
    ]
    assert failure.value._render_traceback_()[0].startswith("✘ kl_standard_normal: it is twice")


def test_large_inputs_are_summarized_and_the_worst_entry_named():
    cases = [{"x": torch.arange(20.0)}]
    wrong = lambda x: x + (x == 13) * 0.5  # noqa: E731
    with pytest.raises(checks.CheckFailed, match=r"largest difference is at index \(13,\): expected 13.0, obtained 13.5") as failure:
        checks.compare("identity", wrong, lambda x: x, cases)
    assert "x=tensor of shape (20,), first values [0.0, 1.0, 2.0, 3.0, …]" in str(failure.value)


def test_an_unattempted_exercise_raises_not_implemented(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CHECKS_LOG", str(tmp_path / "log.jsonl"))

    def stub(mu, logvar):
        raise NotImplementedError("exercise ex-02-kl")

    with pytest.raises(NotImplementedError, match="exercise ex-02-kl"):
        checks.kl_standard_normal(stub)
    entry = json.loads((tmp_path / "log.jsonl").read_text())
    assert (entry["check"], entry["verdict"], entry["passed"]) == ("kl_standard_normal", "not attempted", False)


def test_passing_a_value_instead_of_a_function_fails_clearly():
    with pytest.raises(checks.CheckFailed, match=r"needs your function itself, as in checks.kl_standard_normal\(my_function\), "
                                                 r"but it was given a torch.Tensor"):
        checks.kl_standard_normal(kl_right(torch.zeros(1, 1), torch.zeros(1, 1)))


def test_inputs_are_copies_so_a_function_cannot_spoil_them():
    def in_place(mu, logvar):
        kl = kl_right(mu, logvar)
        mu.zero_(), logvar.zero_()
        return kl

    checks.kl_standard_normal(in_place)


def test_verdicts_are_logged_as_json_lines(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("COURSE_CHECKS_LOG", str(log))
    checks.kl_standard_normal(kl_right)
    with pytest.raises(checks.CheckFailed):
        checks.kl_standard_normal(WRONG["wrong sign"][0])
    checks.compare("a direct comparison", torch.neg, torch.neg, [{"input": torch.ones(2)}])
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["check"], e["name"], e["verdict"], e["passed"]) for e in entries] == [
        ("kl_standard_normal", "kl_standard_normal", "pass", True),
        ("kl_standard_normal", "kl_standard_normal", "fail", False),
        ("a direct comparison", "a direct comparison", "pass", True),
    ]
    assert "opposite" in entries[1]["message"]


def test_nothing_is_logged_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("COURSE_CHECKS_LOG", raising=False)
    monkeypatch.chdir(tmp_path)
    checks.kl_standard_normal(kl_right)
    assert list(tmp_path.iterdir()) == []


def test_compare_handles_tuples_numbers_and_tolerances():
    cases = [{"x": torch.tensor([1.0, -2.0])}]
    pair = lambda x: (x, 2 * x)  # noqa: E731
    checks.compare("pair", lambda x: (x.clone(), 2 * x), pair, cases)
    with pytest.raises(checks.CheckFailed, match="in returned value number 2, it is twice the expected value"):
        checks.compare("pair", lambda x: (x, 4 * x), pair, cases)
    with pytest.raises(checks.CheckFailed, match="a tuple of 2 values was expected"):
        checks.compare("pair", lambda x: x, pair, cases)
    total = lambda x: float(x.sum())  # noqa: E731
    checks.compare("total", lambda x: x.sum(), total, cases)  # a one-element tensor for a number is fine
    with pytest.raises(checks.CheckFailed, match="it returned a str, but a number was expected"):
        checks.compare("total", lambda x: "-1", total, cases)
    checks.compare("close", lambda x: x + 1e-7, lambda x: x, cases)
    with pytest.raises(checks.CheckFailed, match="its values differ"):
        checks.compare("close", lambda x: x + 1e-2, lambda x: x, cases)
    nan = [{"x": torch.tensor([float("nan"), 1.0])}]
    checks.compare("nan where the reference has nan", lambda x: x * 1, lambda x: x, nan)


def test_arguments_go_by_name_when_the_names_match():
    cases = [{"a": torch.tensor([1.0]), "b": torch.tensor([3.0])}]
    checks.compare("a minus b", lambda b, a: a - b, lambda a, b: a - b, cases)  # by name
    checks.compare("a minus b", lambda first, second: first - second, lambda a, b: a - b, cases)  # by position


def test_gaussian_cases_cover_the_prior_and_random_batches():
    cases = checks.gaussian_cases()
    assert all(c["mu"].shape == c["logvar"].shape and c["mu"].dim() == 2 for c in cases)
    assert any(not c["mu"].any() and not c["logvar"].any() for c in cases), "q equal to the prior is an edge case"
    assert len({tuple(c["mu"].shape) for c in cases}) >= 4
    again = checks.gaussian_cases()
    assert all(torch.equal(a["mu"], b["mu"]) and torch.equal(a["logvar"], b["logvar"]) for a, b in zip(cases, again))
    assert not np.allclose(checks.gaussian_cases(seed=1)[-1]["mu"], cases[-1]["mu"])
