"""The FLOP model the benchmark reads its measured speed-up against."""

from __future__ import annotations

import pytest

from mitp.models.flops import Tower, layer_forward, step_flops, vit_tower

VIT_B = vit_tower(12, 768, 3072, 224, 16)
BERT_B = Tower(12, 768, 3072, 16)


def test_layer_forward_counts():
    lin, att = layer_forward(197, 768, 3072)
    assert lin == 2 * 197 * (4 * 768**2 + 2 * 768 * 3072)
    assert att == 4 * 197**2 * 768
    assert VIT_B.tokens == 197 and VIT_B.embed_flops == 2 * 196 * 768 * 768


def run(start, k=None, **kw):
    args = dict(start=start, interval=1, cache_layer=start if k is None else k, prompt_length=8, hub_size=64,
                num_labels=101)
    return step_flops(VIT_B, BERT_B, **{**args, **kw})


def test_vit_base_predictions():
    s8, s10 = run(8), run(10)
    assert 1.85 < s8["predicted_speedup"] < 2.0
    assert 3.1 < s10["predicted_speedup"] < 3.4
    assert s8["raw"] == pytest.approx(s8["forward_skipped"] + s8["forward_kept"] + s8["backward"] + s8["trainable"])
    assert s8["cached"] == pytest.approx(s8["raw"] - s8["forward_skipped"])


def test_backward_stops_at_the_first_interaction_layer_and_k_only_moves_forward_work():
    a, b = run(8, k=8), run(8, k=4)
    assert a["backward"] == b["backward"] and a["raw"] == pytest.approx(b["raw"])
    assert b["predicted_speedup"] < a["predicted_speedup"]
    assert run(10)["backward"] < run(8)["backward"]
    # caching nothing (k = 0) saves only the embeddings
    assert run(8, k=0)["forward_skipped"] == VIT_B.embed_flops


def test_late_fusion_has_no_backward_through_the_towers():
    r = run(8, prompted=False)
    assert r["backward"] == 0 and r["predicted_speedup"] == pytest.approx(r["raw"] / r["cached"])
