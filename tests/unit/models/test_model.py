"""The model: frozen towers reproduce HF, cached start == embedding start, the hub exchanges
both ways (and not in mitp_no_hub), only prompts/hub/head train."""

from __future__ import annotations

import copy

import pytest
import torch

from mitp.models.mitp import MITP, MITPConfig, TextTower, VisionTower
from mitp.training.steps import make_optimizer


def batch(bb, texts=("a red circle", "there is a shiny blue square in the picture"), seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(len(texts), 3, 32, 32, generator=g)
    tok = bb.tokenizer(list(texts), padding="longest", return_tensors="pt")
    return pixels, tok["input_ids"], tok["attention_mask"]


def build(bb, **kw) -> MITP:
    torch.manual_seed(0)
    cfg = MITPConfig(**{"kind": "mitp", "prompt_length": 4, "hub_size": 16, "start": 1, "num_labels": 3, **kw})
    return MITP(cfg, bb.vision, bb.text).eval()


def randomize_hub(model: MITP) -> None:
    """W_out starts at zero (plain carry-over); give it weights so the exchange shows."""
    with torch.no_grad():
        for w in (model.hub.w_out_v, model.hub.w_out_t):
            w.weight.normal_(0, 0.5)


def test_layer_loop_reproduces_hf_vit(tiny_backbones):
    pixels, _, _ = batch(tiny_backbones)
    vit = tiny_backbones.vision
    tower = VisionTower(vit)
    with torch.no_grad():
        x = tower.embed(pixels)
        for i in range(tower.depth):
            x = tower.layer(i, x)
        ref = vit(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(vit.layernorm(x), ref, rtol=0, atol=1e-6)


def test_layer_loop_reproduces_hf_bert_with_padding(tiny_backbones):
    _, ids, mask = batch(tiny_backbones)
    assert (mask == 0).any(), "the batch must contain padding for this test to mean anything"
    bert = tiny_backbones.text
    tower = TextTower(bert)
    with torch.no_grad():
        x = tower.embed(ids)
        m = tower.additive_mask(mask, x.dtype)
        for i in range(tower.depth):
            x = tower.layer(i, x, m)
        ref = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tower_kind", ["vision", "text"])
def test_layer_rows_are_the_full_layers_rows(tiny_backbones, tower_kind, monkeypatch):
    """The last layer computes only the rows the readout reads; those rows equal the full
    layer's, with text padding masked, and gradients reach every input token as before."""
    pixels, ids, mask = batch(tiny_backbones)
    if tower_kind == "vision":
        tower = VisionTower(tiny_backbones.vision)
        x0, m = tower.embed(pixels), None
    else:
        tower = TextTower(tiny_backbones.text)
        x0 = tower.embed(ids)
        m = tower.additive_mask(mask, x0.dtype)
    rows = [0, 2, 3]
    grads = []
    for part in ("full", "rows"):
        x = x0.detach().clone().requires_grad_(True)
        if part == "full":
            out = tower.layer(3, x, m)[:, rows]
        else:
            with monkeypatch.context() as mp:  # the saving is real: the full layer is never called
                mp.setattr(tower.layers[3], "forward", lambda *a, **k: pytest.fail("ran the full layer"))
                out = tower.layer_rows(3, x, rows, m)
        out.sum().backward()
        grads.append((out.detach(), x.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=0, atol=1e-5)
    assert grads[0][1][:, 1].abs().sum() > 0  # a row not read still gets a gradient (through keys and values)


@pytest.mark.parametrize("kind", ["mitp", "mitp_no_hub", "late_fusion"])
def test_last_layer_rows_give_the_full_models_logits(tiny_backbones, kind, monkeypatch):
    model = build(tiny_backbones, kind=kind, start=0)
    if model.hub is not None:
        randomize_hub(model)
    pixels, ids, mask = batch(tiny_backbones)
    with torch.no_grad():
        fast = model(mask, pixel_values=pixels, input_ids=ids).logits
        for tower in (VisionTower, TextTower):  # every row of the last layer computed, then the rows picked
            monkeypatch.setattr(tower, "layer_rows", lambda self, i, x, rows, m=None: self.layer(i, x, m)[:, rows])
        full = model(mask, pixel_values=pixels, input_ids=ids).logits
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["mitp", "mitp_no_hub", "late_fusion"])
@pytest.mark.parametrize("k", [0, 1])
def test_cached_start_matches_embedding_start(tiny_backbones, kind, k):
    model = build(tiny_backbones, kind=kind)
    if model.hub is not None:
        randomize_hub(model)
    pixels, ids, mask = batch(tiny_backbones)
    with torch.no_grad():
        full = model(mask, pixel_values=pixels, input_ids=ids).logits
        h_v, h_t = model.encode_prefix(pixels, ids, mask, k)
        cached32 = model(mask, hidden_v=h_v, hidden_t=h_t, start_layer=k).logits
        cached16 = model(mask, hidden_v=h_v.half(), hidden_t=h_t.half(), start_layer=k).logits
    torch.testing.assert_close(cached32, full, rtol=0, atol=1e-5)
    # float16 storage of the hidden states: logits within 1e-2 (about 3 decimal digits of fp16)
    assert (cached16 - full).abs().max().item() < 1e-2


def test_cache_above_start_is_refused(tiny_backbones):
    model = build(tiny_backbones, start=1)
    pixels, ids, mask = batch(tiny_backbones)
    h_v, h_t = model.encode_prefix(pixels, ids, mask, 2)
    with pytest.raises(ValueError, match="cache.layer"):
        model(mask, hidden_v=h_v, hidden_t=h_t, start_layer=2)


def test_start_beyond_depth_names_the_key(tiny_backbones):
    with pytest.raises(ValueError, match="model.interaction.start"):
        build(tiny_backbones, start=4)


def _next_prompts(model, pixels, ids, mask):
    with torch.no_grad():
        out = model(mask, pixel_values=pixels, input_ids=ids, return_prompts=True)
    return out.prompts_v[1], out.prompts_t[1]  # P after one hub step


def _prompts_under_changes(bb, model):
    """Next prompts (vision, text) for a batch, with its text changed, and with its image changed."""
    randomize_hub(model)
    pixels, ids, mask = batch(bb, texts=("a red circle", "a red circle"))
    _, ids_other, mask_other = batch(bb, texts=("a blue square", "a blue square"))
    pv, pt = _next_prompts(model, pixels, ids, mask)
    pv_text_changed, _ = _next_prompts(model, pixels, ids_other, mask_other)
    _, pt_image_changed = _next_prompts(model, torch.randn_like(pixels), ids, mask)
    return (pv, pv_text_changed), (pt, pt_image_changed)


def test_hub_exchange_is_two_way(tiny_backbones):
    (pv, pv_text_changed), (pt, pt_image_changed) = _prompts_under_changes(tiny_backbones, build(tiny_backbones, kind="mitp"))
    assert (pv_text_changed - pv).abs().max() > 1e-4, "text must reach the vision prompts"
    assert (pt_image_changed - pt).abs().max() > 1e-4, "the image must reach the text prompts"


def test_no_hub_has_no_exchange(tiny_backbones):
    (pv, pv2), (pt, pt2) = _prompts_under_changes(tiny_backbones, build(tiny_backbones, kind="mitp_no_hub"))
    torch.testing.assert_close(pv2, pv, rtol=0, atol=0)
    torch.testing.assert_close(pt2, pt, rtol=0, atol=0)


def test_zero_init_hub_starts_as_carry_over(tiny_backbones):
    model = build(tiny_backbones, kind="mitp")
    pixels, ids, mask = batch(tiny_backbones)
    with torch.no_grad():
        out = model(mask, pixel_values=pixels, input_ids=ids, return_prompts=True)
        # O at layer s, recomputed by hand: the next prompts equal it exactly
        x_v, x_t = model.encode_prefix(pixels, ids, mask, 1)
        p_v = model.prompt_v.expand(2, -1, -1)
        o_v = model.vision.layer(1, torch.cat([x_v, p_v], 1))[:, -4:]
    torch.testing.assert_close(out.prompts_v[1], o_v, rtol=0, atol=1e-6)


def test_only_prompts_hub_head_train_and_backbones_stay_frozen(tiny_backbones):
    model = build(tiny_backbones, kind="mitp")
    model.train()
    assert not model.vision.training and not model.text.training, "backbones must stay in eval mode"
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt, sched = make_optimizer(model, _params().train, total_steps=10)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in in_opt}
    assert names and all(n.startswith(("prompt_", "hub.", "head.")) for n in names)
    pixels, ids, mask = batch(tiny_backbones)
    out = model(mask, pixel_values=pixels, input_ids=ids, labels=torch.tensor([0, 2]))
    out.loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, n
            assert torch.equal(p, frozen_before[n]), f"frozen parameter {n} changed"
    assert model.prompt_v.grad is not None and model.prompt_v.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["mitp", "mitp_no_hub", "late_fusion"])
def test_parameter_groups_count_what_trains(tiny_backbones, kind):
    """Counts against the shapes the model is specified with, and against what actually trains."""
    model = build(tiny_backbones, kind=kind)
    groups = model.parameter_groups()
    d_v, d_t = tiny_backbones.vision.config.hidden_size, tiny_backbones.text.config.hidden_size
    M, h, K = 4, 16, 3
    readout = 2 * (d_v + d_t) if kind != "late_fusion" else d_v + d_t
    assert groups["head"] == 2 * readout + readout * K + K  # LayerNorm + Linear(K)
    if kind == "late_fusion":
        assert groups["prompts"] == 0 and groups["hub"] == 0
    else:
        assert groups["prompts"] == M * (d_v + d_t)
        n_steps = len(model.layers_i) - 1  # start 1 of 4 layers: 2 hub steps
        exchange = kind == "mitp"  # mitp_no_hub builds no tau and W_out reads Z alone (C = 0)
        w_out_in = 2 * h if exchange else h
        hub = (2 * d_v + 2 * d_t + (d_v + 1) * h + (d_t + 1) * h + n_steps * h + int(exchange)
               + (w_out_in + 1) * d_v + (w_out_in + 1) * d_t)
        assert n_steps == 2 and groups["hub"] == hub
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(groups.values()) == trainable == sum(p.numel() for p in model.trainable_parameters())


def test_multi_label_loss(tiny_backbones):
    """Multi-hot labels train with per-label sigmoid BCE, not a softmax cross-entropy (which also
    accepts float targets but makes the labels compete)."""
    import torch.nn.functional as F

    model = build(tiny_backbones, num_labels=5, multi_label=True)
    pixels, ids, mask = batch(tiny_backbones)
    labels = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.float)
    out = model(mask, pixel_values=pixels, input_ids=ids, labels=labels)
    assert out.logits.shape == (2, 5)
    logits = out.logits.double()
    p = torch.sigmoid(logits)
    by_hand = -(labels * p.log() + (1 - labels) * (1 - p).log()).mean()
    torch.testing.assert_close(out.loss.double(), by_hand, rtol=1e-5, atol=1e-6)
    assert abs(F.cross_entropy(logits, labels.double()).item() - by_hand.item()) > 0.1  # the two differ here


def test_towers_of_different_depth_align_from_the_top(tiny_backbones):
    text = copy.deepcopy(tiny_backbones.text)
    text.encoder.layer = text.encoder.layer[:3]  # a 3-layer text tower against a 4-layer ViT
    model = MITP(MITPConfig(prompt_length=4, hub_size=16, start=1), tiny_backbones.vision, text).eval()
    assert model.depth == 3 and model.offset_v == 1 and model.layers_i == [1, 2]
    pixels, ids, mask = batch(tiny_backbones)
    with torch.no_grad():
        full = model(mask, pixel_values=pixels, input_ids=ids).logits
        h_v, h_t = model.encode_prefix(pixels, ids, mask, 1)
        cached = model(mask, hidden_v=h_v, hidden_t=h_t, start_layer=1).logits
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)


def _params():
    from mitp.config.params import load_params

    return load_params(overrides={"train.weight_decay": 0.01})


def test_tiny_tokenizer_covers_english_without_unk(tiny_backbones):
    tok = tiny_backbones.tokenizer
    ids = tok("A shiny red Circle, next to xylophones! 42 wooden boxes?")["input_ids"]
    assert tok.unk_token_id not in ids
    assert "red" in tok.convert_ids_to_tokens(ids)  # common words are whole tokens
