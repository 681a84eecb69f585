"""The training step shared by ``fit`` and the cache benchmark, and its learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from mitp.config.params import load_params
from mitp.models.mitp import MITP, MITPConfig
from mitp.training.steps import TrainingDiverged, check_finite, make_optimizer, train_step


def _model(bb) -> MITP:
    torch.manual_seed(0)
    return MITP(MITPConfig(kind="mitp", prompt_length=4, hub_size=16, start=1, num_labels=3), bb.vision, bb.text)


def _batch(bb) -> dict:
    g = torch.Generator().manual_seed(0)
    tok = bb.tokenizer(["a red circle", "a blue square next to it"], padding="longest", return_tensors="pt")
    return {"pixel_values": torch.randn(2, 3, 32, 32, generator=g), "input_ids": tok["input_ids"],
            "attention_mask": tok["attention_mask"], "labels": torch.tensor([0, 2])}


def test_warmup_then_cosine_to_zero(tiny_backbones):
    lr, total = 1e-3, 40
    params = load_params(overrides={"train.lr": lr, "train.warmup_ratio": 0.25})
    opt, sched = make_optimizer(_model(tiny_backbones), params.train, total_steps=total)
    curve = []
    for step in range(total + 1):
        lrs = {g["lr"] for g in opt.param_groups}
        assert len(lrs) == 1, f"step {step}: the decay and no-decay groups must share one lr"
        curve.append(lrs.pop())
        if step < total:
            opt.step()
            sched.step()
    warmup = 10
    # linear warm-up from 0 to the peak, reached after `warmup` steps
    assert curve[:warmup + 1] == pytest.approx([lr * i / warmup for i in range(warmup + 1)])
    # then half a cosine down to 0 at the last step
    decay = [lr * 0.5 * (1 + math.cos(math.pi * (i - warmup) / (total - warmup))) for i in range(warmup, total + 1)]
    assert curve[warmup:] == pytest.approx(decay, abs=1e-12)
    assert curve[warmup + (total - warmup) // 2] == pytest.approx(lr / 2)
    assert curve[-1] == pytest.approx(0.0, abs=1e-12)


def test_train_step_updates_only_trainable_parts_and_returns_the_loss(tiny_backbones):
    model = _model(tiny_backbones).train()
    params = load_params(overrides={"train.warmup_ratio": 0.0})
    opt, sched = make_optimizer(model, params.train, total_steps=4)
    opt.step()  # no gradients yet: a no-op that moves past the zero-lr first step of the warm-up
    sched.step()
    batch = _batch(tiny_backbones)
    model.eval()
    with torch.no_grad():
        expected = model(**batch, start_layer=0).loss.item()  # no dropout: the step sees the same loss
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = train_step(model, batch, opt, sched, start_layer=0, grad_clip=1.0, device=torch.device("cpu"))
    assert loss.item() == pytest.approx(expected, rel=1e-6) and not loss.requires_grad
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "prompt_v" in changed and any(n.startswith("head.") for n in changed)
    assert all(n.startswith(("prompt_", "hub.", "head.")) for n in changed)
    assert sched.last_epoch == 2  # the schedule advanced with the step


def test_non_finite_loss_stops_training_before_a_checkpoint(tiny_backbones):
    """The step does not sync with the host; the summed loss is checked every few steps and at
    the end of each epoch, before anything is checkpointed: divergence names epoch and step."""
    model = _model(tiny_backbones)
    opt, sched = make_optimizer(model, load_params().train, total_steps=4)
    with torch.no_grad():
        model.head[-1].bias.fill_(float("nan"))
    loss = train_step(model, _batch(tiny_backbones), opt, sched, start_layer=0, grad_clip=1.0,
                      device=torch.device("cpu"))
    assert not torch.isfinite(loss)
    check_finite(torch.tensor(3.0), epoch=0, step=0, scheduler=sched)  # a finite sum passes
    with pytest.raises(TrainingDiverged, match=r"by epoch 2, step 7 .*lower train.lr"):
        check_finite(loss * 64, epoch=1, step=6, scheduler=sched)
