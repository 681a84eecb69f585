"""finetune: both towers train (at train.backbone_lr), the late-fusion readout, and the feature
cache is refused with an error naming the key."""

from __future__ import annotations

import copy

import pytest
import torch

from mitp.config.params import load_params
from mitp.errors import ConfigError
from mitp.models.mitp import MITP, MITPConfig
from mitp.training.fit import fit
from mitp.training.steps import make_optimizer


def test_a_step_changes_both_backbones(tiny_backbones):
    vision, text = copy.deepcopy(tiny_backbones.vision), copy.deepcopy(tiny_backbones.text)
    torch.manual_seed(0)
    model = MITP(MITPConfig(kind="finetune", num_labels=3), vision, text).train()
    assert model.vision.training and model.text.training, "fine-tuned towers follow .train()"
    params = load_params(overrides={"model.kind": "finetune", "train.lr": 1e-3, "train.backbone_lr": 1e-4})
    opt, schedule = make_optimizer(model, params.train, total_steps=10)
    lrs = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}  # before warm-up scales it
    assert lrs[id(vision.layers[0].attention.q_proj.weight)] == 1e-4
    assert lrs[id(text.embeddings.word_embeddings.weight)] == 1e-4
    assert lrs[id(model.head[2].weight)] == 1e-3
    assert len(lrs) == sum(1 for _ in model.parameters()), "every parameter trains"

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tok = tiny_backbones.tokenizer(["a red circle", "a blue square"], padding="longest", return_tensors="pt")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = model(tok["attention_mask"], pixel_values=pixels, input_ids=tok["input_ids"], labels=torch.tensor([0, 2]))
    out.loss.backward()
    schedule.step()  # past the warm-up's first step, whose lr is 0
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "vision.vit.layers.0.attention.q_proj.weight" in changed
    assert "text.bert.encoder.layer.0.attention.self.query.weight" in changed
    assert "vision.vit.embeddings.patch_embeddings.projection.weight" in changed
    assert "text.bert.embeddings.word_embeddings.weight" in changed


def test_asking_for_the_cache_is_refused(make_params):
    params = make_params({"model.kind": "finetune", "cache.enabled": True})
    with pytest.raises(ConfigError, match=r"^cache\.enabled: model\.kind=finetune .*set cache\.enabled=false"):
        fit(params, "synthetic")


def test_finetune_cannot_be_built_for_the_cached_path(tiny_backbones):
    with pytest.raises(ConfigError, match="cache.enabled"):
        MITP(MITPConfig(kind="finetune"), copy.deepcopy(tiny_backbones.vision), copy.deepcopy(tiny_backbones.text),
             drop_below=0)
