"""What a FLOP count predicts for the cache's speed-up: the ceiling the benchmark is read against.

One training step of MITP on a batch, per sample (multiply-add = 2 FLOPs):

* forward of a transformer layer on n tokens of width d with an FFN of width f:
  linear ``2 n (4 d^2 + 2 d f)`` + attention ``4 n^2 d`` (scores and weighted sum);
* backward through a *frozen* layer computes activation gradients only (no weight gradients):
  ``1x`` the linear forward and ``2x`` the attention forward (dQ and dK, dA and dV);
* gradients flow down to the first interaction layer s, where the first prompts enter, and no
  further; interaction layers carry the M prompt tokens too;
* the raw path also runs the embeddings (the ViT patch projection) and layers 0..k-1, which
  the cached path skips; trainable parts (hub, head) count forward + 2x backward.

Elementwise work (layernorm, softmax, GELU), data loading and the optimizer step are left out:
the measured ratio can exceed this prediction when the raw path's image decoding is slow.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tower:
    depth: int
    width: int  # d
    ffn: int  # f
    tokens: int  # n entering every layer (patches + CLS, or the batch's text length)
    embed_flops: float = 0.0  # per sample (ViT: the patch projection)


def layer_forward(n: float, d: int, f: int) -> tuple[float, float]:
    """(linear, attention) forward FLOPs of one layer on n tokens."""
    return 2.0 * n * (4 * d * d + 2 * d * f), 4.0 * n * n * d


def vit_tower(depth: int, width: int, ffn: int, image_size: int, patch: int, channels: int = 3) -> Tower:
    patches = (image_size // patch) ** 2
    return Tower(depth, width, ffn, patches + 1, 2.0 * patches * channels * patch * patch * width)


def step_flops(vision: Tower, text: Tower, *, start: int, interval: int, cache_layer: int, prompt_length: int,
               hub_size: int, num_labels: int, prompted: bool = True) -> dict[str, float]:
    """Per-sample FLOPs of one training step, raw vs cached, and the predicted speed-up."""
    depth = min(vision.depth, text.depth)  # towers aligned from the top
    layers_i = set(range(start, depth, interval)) if prompted else set()
    M = prompt_length if prompted else 0
    fwd_prefix = vision.embed_flops + text.embed_flops
    fwd_top = bwd = 0.0
    for tower in (vision, text):
        off = tower.depth - depth
        for i in range(tower.depth):
            aligned = i - off
            n = tower.tokens + (M if aligned in layers_i else 0)
            lin, att = layer_forward(n, tower.width, tower.ffn)
            if aligned < cache_layer:
                fwd_prefix += lin + att
            else:
                fwd_top += lin + att
            if prompted and aligned >= start:
                bwd += lin + 2 * att
    readout = 2 * (vision.width + text.width) if prompted else vision.width + text.width
    trainable = 2.0 * readout * num_labels
    if prompted and len(layers_i) > 1:
        h, dv, dt = hub_size, vision.width, text.width
        per_step = 2.0 * M * (dv * h + dt * h + 2 * h * dv + 2 * h * dt) + 2 * 2.0 * M * M * h
        trainable += per_step * (len(layers_i) - 1)
    trainable *= 3  # forward + backward (weight and input gradients)
    raw = fwd_prefix + fwd_top + bwd + trainable
    cached = fwd_top + bwd + trainable
    return {"forward_skipped": fwd_prefix, "forward_kept": fwd_top, "backward": bwd, "trainable": trainable,
            "raw": raw, "cached": cached, "predicted_speedup": raw / cached}
