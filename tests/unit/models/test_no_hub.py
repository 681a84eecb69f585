"""Trainable counts that mean what they say: ``mitp_no_hub`` builds no part that cannot learn,
and a single interaction layer (no hub at all) warns that ``mitp`` and ``mitp_no_hub`` coincide."""

from __future__ import annotations

import warnings

import pytest
import torch

from mitp.models.mitp import MITP, MITPConfig
from mitp.models.summary import model_summary

PAPER = {"backbone.preset": "vit-base+bert-base", "model.hub_size": 384, "model.prompt_length": 8,
         "model.interaction.start": 8}


def test_no_hub_count_at_the_paper_setting_drops_exactly_the_dead_parts(make_params):
    counts = {kind: model_summary(make_params({**PAPER, "model.kind": kind}), "food101")
              for kind in ("mitp", "mitp_no_hub")}
    h, d_v, d_t = 384, 768, 768  # ViT-B/16 and BERT-base widths
    dead = 1 + h * d_v + h * d_t  # log_tau, and the half of W_out^v and W_out^t that reads C
    assert counts["mitp"]["trainable_params"] - counts["mitp_no_hub"]["trainable_params"] == dead
    assert counts["mitp"]["trainable_by_part"]["hub"] - counts["mitp_no_hub"]["trainable_by_part"]["hub"] == dead
    assert counts["mitp"]["trainable_by_part"]["head"] == counts["mitp_no_hub"]["trainable_by_part"]["head"]
    assert counts["mitp"]["total_params"] - counts["mitp_no_hub"]["total_params"] == dead


def test_every_no_hub_parameter_learns(tiny_backbones):
    """One backward pass reaches every trainable parameter of mitp_no_hub (none is dead)."""
    torch.manual_seed(0)
    model = MITP(MITPConfig(kind="mitp_no_hub", prompt_length=4, hub_size=16, start=0), tiny_backbones.vision,
                 tiny_backbones.text).train()
    with torch.no_grad():  # W_out starts at zero; without weights there the hub input gets no gradient
        for w in (model.hub.w_out_v, model.hub.w_out_t):
            w.weight.normal_(0, 0.5)
    tok = tiny_backbones.tokenizer(["a red circle", "a blue square"], padding="longest", return_tensors="pt")
    out = model(tok["attention_mask"], pixel_values=torch.randn(2, 3, 32, 32), input_ids=tok["input_ids"],
                labels=torch.tensor([0, 1]))
    out.loss.backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert dead == []


def test_single_interaction_layer_warns_that_the_variants_coincide(tiny_backbones):
    with pytest.warns(UserWarning, match="mitp and mitp_no_hub are the same model"):
        MITP(MITPConfig(kind="mitp", start=3), tiny_backbones.vision, tiny_backbones.text)  # depth 4: I = {3}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MITP(MITPConfig(kind="mitp", start=2), tiny_backbones.vision, tiny_backbones.text)  # I = {2, 3}: a hub
