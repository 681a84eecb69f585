"""PMF: only prompts, mappers and heads train, the layers below the fusion layers get no
gradient, both directions carry information, the cache may start at most at the first fusion
layer, and the count at the paper setting stays under 3% of the backbones. (Cached start ==
raw start, for PMF and MITP alike: tests/unit/models/test_lazy_layers.py.)"""

from __future__ import annotations

import pytest
import torch

from mitp.config.params import load_params
from mitp.models.pmf import PMF, PMFConfig
from mitp.models.summary import model_summary
from mitp.training.steps import make_optimizer


def batch(bb, texts=("a red circle", "there is a shiny blue square in the picture"), seed=0):
    g = torch.Generator().manual_seed(seed)
    tok = bb.tokenizer(list(texts), padding="longest", return_tensors="pt")
    return torch.randn(len(texts), 3, 32, 32, generator=g), tok["input_ids"], tok["attention_mask"]


def build(bb, **kw) -> PMF:
    torch.manual_seed(0)
    return PMF(PMFConfig(**{"num_labels": 3, **kw}), bb.vision, bb.text).eval()


def test_fusion_layers_are_the_top_ones(tiny_backbones):
    model = build(tiny_backbones)
    assert model.layers_i == [2, 3] and model.first_interaction == 2
    # the config's view of the same rule (what the cache layer is checked against)
    params = load_params(overrides={"model.kind": "pmf"})
    assert params.model.first_interaction_layer(4) == 2 and params.model.first_interaction_layer(12) == 10
    with pytest.raises(ValueError, match="model.pmf.n_fusion_layers"):
        build(tiny_backbones, n_fusion_layers=5)


def test_cache_above_the_first_fusion_layer_is_refused(tiny_backbones):
    model = build(tiny_backbones)
    pixels, ids, mask = batch(tiny_backbones)
    h_v, h_t = model.encode_prefix(pixels, ids, mask, 3)
    with pytest.raises(ValueError, match="cache.layer: hidden states enter layer 3, above the first interaction layer 2"):
        model(mask, hidden_v=h_v, hidden_t=h_t, start_layer=3)


def one_step(model, opt, pixels, ids, mask) -> None:
    model(mask, pixel_values=pixels, input_ids=ids, labels=torch.tensor([0, 2])).loss.backward()
    opt.step()


def test_only_prompts_mappers_heads_train_and_lower_layers_get_no_gradient(tiny_backbones):
    model = build(tiny_backbones).train()
    assert not model.vision.training and not model.text.training
    params = load_params()
    opt, _ = make_optimizer(model, params.train, total_steps=10)
    names = {n for n, p in model.named_parameters() if any(p is q for g in opt.param_groups for q in g["params"])}
    assert names and all(n.startswith(("prompt_", "mappers.", "head.")) for n in names)
    # every prompt type, fusion-context ones included (the official file leaves those frozen)
    assert {n.split(".")[0] for n in names if n.startswith("prompt_")} == {
        "prompt_query_v2t", "prompt_context_v2t", "prompt_query_t2v", "prompt_context_t2v",
        "prompt_fusion_v", "prompt_fusion_t"}
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    one_step(model, opt, *batch(tiny_backbones))
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None and torch.equal(p, frozen_before[n]), n
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{n} got no gradient"


def test_queries_cross_both_ways(tiny_backbones):
    """The text reaches the vision tower's CLS and the image the text tower's CLS (through the
    mapped query prompts only: the towers are otherwise separate)."""
    model = build(tiny_backbones)
    with torch.no_grad():
        for m in model.mappers.values():
            for mapper in m:
                mapper[2].weight.normal_(0, 0.5)
    pixels, ids, mask = batch(tiny_backbones, texts=("a red circle", "a red circle"))
    _, ids2, mask2 = batch(tiny_backbones, texts=("a blue square", "a blue square"))
    head_v, head_t = model.head["v"], model.head["t"]
    captured = {}
    head_v.register_forward_hook(lambda m, i, o: captured.__setitem__("v", i[0]))
    head_t.register_forward_hook(lambda m, i, o: captured.__setitem__("t", i[0]))

    def cls(px, ii, mm):
        with torch.no_grad():
            model(mm, pixel_values=px, input_ids=ii)
        return captured["v"].clone(), captured["t"].clone()

    v, t = cls(pixels, ids, mask)
    v_text_changed, _ = cls(pixels, ids2, mask2)
    _, t_image_changed = cls(torch.randn_like(pixels), ids, mask)
    assert (v_text_changed - v).abs().max() > 1e-4, "text must reach the vision tower"
    assert (t_image_changed - t).abs().max() > 1e-4, "the image must reach the text tower"


def test_paper_setting_count_is_under_three_percent_of_the_backbones():
    params = load_params(overrides={"backbone.preset": "vit-base+bert-base", "model.kind": "pmf"})
    s = model_summary(params, "food101")
    d, h, K = 768, 384, 101
    prompts = 2 * 2 * (4 + 4 + 4) * d  # F steps x two towers x (qp + qcp + fcp) x width
    mappers = 2 * 2 * (d * h + h + h * d + d)
    heads = 2 * (d * K + K)
    assert s["trainable_by_part"] == {"prompts": prompts, "mappers": mappers, "head": heads}
    assert s["trainable_params"] / s["backbone_params"] < 0.03


def test_a_saved_config_rebuilds_the_same_pmf(tiny_backbones):
    """A trained model's card holds ``asdict(model.config)``; it must rebuild a PMF, not an MITP."""
    import copy
    import dataclasses

    from mitp.models.kinds import from_config

    model = build(tiny_backbones).eval()
    again = from_config(dataclasses.asdict(model.config), copy.deepcopy(tiny_backbones.vision),
                        copy.deepcopy(tiny_backbones.text)).eval()
    again.load_state_dict(model.state_dict())
    assert isinstance(again, PMF)
    pixels, ids, mask = batch(tiny_backbones)
    with torch.no_grad():
        assert torch.equal(model(mask, pixel_values=pixels, input_ids=ids).logits,
                           again(mask, pixel_values=pixels, input_ids=ids).logits)


@pytest.mark.parametrize("n_fcp", [4, 0])
def test_computing_only_the_rows_read_gives_the_full_layers_logits(tiny_backbones, monkeypatch, n_fcp):
    """The query passes compute the query rows alone and the last fusion pass CLS alone: the
    logits and the prompts' gradients are those of running every row."""
    from mitp.models.mitp import TextTower, VisionTower

    pixels, ids, mask = batch(tiny_backbones)
    outs = []
    for full in (False, True):
        model = build(tiny_backbones, n_fcp=n_fcp).train()
        if full:
            for tower in (VisionTower, TextTower):
                monkeypatch.setattr(tower, "layer_rows", lambda self, i, x, rows, m=None: self.layer(i, x, m)[:, rows])
        out = model(mask, pixel_values=pixels, input_ids=ids, labels=torch.tensor([0, 2]))
        out.loss.backward()
        outs.append((out.logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=1e-5)
    assert outs[0][1].keys() == outs[1][1].keys() and any(k.startswith("prompt_query") for k in outs[0][1])
    for name, g in outs[0][1].items():
        torch.testing.assert_close(g, outs[1][1][name], rtol=1e-4, atol=1e-6, msg=name)
