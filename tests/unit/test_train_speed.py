"""The training-speed benchmark runs and its fast path computes what the eager one does; the
compiled step falls back to eager mode, with one warning, when the compiler fails."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mitp.config.params import REPO_ROOT
from mitp.training.compiled import StepRunner, wants_compile

KEYS = {"eager_samples_per_s", "fast_samples_per_s", "fast_eager_samples_per_s", "speedup", "max_abs_logit_diff",
        "startup_to_first_step_s", "compiled"}
LOGIT_TOL = 1e-4  # float32, a few AdamW steps: compiled kernels reorder sums, nothing more


@pytest.mark.slow
def test_smoke_run_prints_the_json_line_with_matching_logits():
    proc = subprocess.run([sys.executable, "benchmarks/train_speed.py", "--smoke"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert KEYS <= set(result)
    assert result["smoke"] is True and result["threads"] == 1
    assert result["max_abs_logit_diff"] <= LOGIT_TOL
    assert result["eager_samples_per_s"] > 0 and result["fast_samples_per_s"] > 0
    assert result["startup_to_first_step_s"] > 0


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
