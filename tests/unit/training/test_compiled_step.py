"""The compiled step falls back to eager mode, with one warning, when the compiler fails."""

from __future__ import annotations

import pytest
import torch

from mitp.training.compiled import StepRunner, wants_compile


def _toy():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
    x = torch.randn(16, 4)
    return model, x


def _loss(module, x):
    return module(x).pow(2).mean()


def test_compiler_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    model, x = _toy()
    ref = _loss(model, x)
    ref.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    def broken(module, **kw):  # what a missing C++ compiler looks like: it fails at the first call
        def run(*a, **k):
            raise RuntimeError("InductorError: no C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    runner = StepRunner(model, enabled=True)
    with pytest.warns(RuntimeWarning, match="train.compile: torch.compile failed") as caught:
        loss = runner(_loss, x)
        runner(_loss, x)  # already eager: no second warning
    assert len([w for w in caught if "train.compile" in str(w.message)]) == 1
    assert not runner.active
    assert torch.equal(loss.detach(), ref.detach())
    # the failed compiled attempt left no gradient behind: two eager steps accumulated exactly twice
    for p, g in zip(model.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, 2 * g)


def test_compile_setting():
    cpu = torch.device("cpu")
    assert wants_compile(False, cpu) is False and wants_compile("false", cpu) is False
    assert wants_compile(True, cpu) is True
    assert wants_compile("auto", cpu) is False  # measured: a cold CPU compile costs more than a demo run saves
