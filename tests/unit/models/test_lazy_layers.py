"""A model built for hidden states entering layer k keeps neither the embeddings nor the
layers below k: count the parameters actually materialised. Its logits from the cached hidden
states equal the full model's from raw inputs (MITP and PMF). (``fit`` from the cache builds it
that way: tests/cache/test_cache_training.py.)"""

from __future__ import annotations

import copy

import pytest
import torch

from mitp.config.params import load_params
from mitp.models.kinds import build_model


def towers(bb):
    return copy.deepcopy(bb.vision), copy.deepcopy(bb.text)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def layer_params(vision, text, i) -> int:
    return count(vision.layers[i]) + count(text.encoder.layer[i])


@pytest.mark.parametrize("kind, overrides", [("mitp", {"model.interaction.start": 2}), ("pmf", {})])
@pytest.mark.parametrize("k", [0, 1, 2])
def test_layers_below_k_are_not_materialised_and_logits_agree(tiny_backbones, kind, overrides, k):
    params = load_params(overrides={"model.kind": kind, **overrides})
    v_full, t_full = towers(tiny_backbones)
    embeddings = count(v_full.embeddings) + count(t_full.embeddings)
    below = sum(layer_params(v_full, t_full, i) for i in range(k))
    torch.manual_seed(0)
    full = build_model(params, v_full, t_full, 3, False).eval()
    torch.manual_seed(0)
    lean = build_model(params, *towers(tiny_backbones), 3, False, drop_below=k).eval()

    assert count(full) - count(lean) == embeddings + below
    assert lean.vision.vit.embeddings is None and lean.text.bert.embeddings is None
    assert all(count(lean.vision.layers[i]) == 0 and count(lean.text.layers[i]) == 0 for i in range(k))
    # the trainable part is untouched
    assert lean.parameter_groups() == full.parameter_groups()

    tok = tiny_backbones.tokenizer(["a red circle", "a shiny blue square on the left"], padding="longest",
                                   return_tensors="pt")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = full(tok["attention_mask"], pixel_values=pixels, input_ids=tok["input_ids"]).logits
        h_v, h_t = full.encode_prefix(pixels, tok["input_ids"], tok["attention_mask"], k)
        got = lean(tok["attention_mask"], hidden_v=h_v, hidden_t=h_t, start_layer=k).logits
        got16 = lean(tok["attention_mask"], hidden_v=h_v.half(), hidden_t=h_t.half(), start_layer=k).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (got16 - want).abs().max().item() < 1e-2  # float16 storage of the hidden states
    with pytest.raises(ValueError, match="can only run cached hidden states"):
        lean(tok["attention_mask"], pixel_values=pixels, input_ids=tok["input_ids"])
