"""The cache fingerprint: everything that determines the cached bytes.

Backbone ids and revisions (or the tiny-random seed and recipe), the backbones' shapes, k
(``cache.layer``), the maximum text length, the image processor's settings, the tokenizer's
settings, the manifests' hash, the storage dtype and the cache code's format version. Training
compares the stored fingerprint with the one its configuration implies and refuses a cache that
differs, naming the fields (:func:`describe_diff`).

What is *not* in it: the shard size and batch size of the build (layout, recorded in the index)
and the device the cache was computed on (fp32 on either; fp16 storage error dominates).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mitp.backbones import spec_from_config
from mitp.data.manifests import manifest_hash
from mitp.dotted_keys import flatten

CACHE_FORMAT = 1  # bump when the stored layout or the way the states are computed changes

_VISION_SHAPE = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "image_size", "patch_size", "num_channels")
_TEXT_SHAPE = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "vocab_size", "max_position_embeddings")


def _plain(obj: Any) -> Any:
    """JSON round trip: tuples become lists, so a fingerprint compares equal to its stored copy."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def processor_settings(processor) -> dict:
    """The image processor's settings (resize, rescale, normalise), without bookkeeping keys."""
    raw = processor.to_dict() if hasattr(processor, "to_dict") else dict(vars(processor))
    return _plain({k: v for k, v in raw.items() if not k.startswith("_") and k != "processor_class"})


def tokenizer_settings(tokenizer) -> dict:
    kw = getattr(tokenizer, "init_kwargs", {}) or {}
    return _plain({
        "vocab_size": len(tokenizer),
        "do_lower_case": kw.get("do_lower_case"),
        "strip_accents": kw.get("strip_accents"),
        "padding_side": getattr(tokenizer, "padding_side", None),
        "truncation_side": getattr(tokenizer, "truncation_side", None),
    })


def fingerprint(params, dataset: str, backbones) -> dict:
    """The fingerprint a cache of ``dataset`` must carry to serve ``params`` with ``backbones``."""
    vcfg, tcfg = backbones.vision.config, backbones.text.config
    return _plain({
        "format": CACHE_FORMAT,
        "backbone": spec_from_config(params.backbone).fingerprint(),
        "backbone_resolved": backbones.spec.fingerprint(),  # commits fetched, image-processor backend
        "backbone_shapes": {
            "vision": {k: getattr(vcfg, k, None) for k in _VISION_SHAPE},
            "text": {k: getattr(tcfg, k, None) for k in _TEXT_SHAPE},
        },
        "layer": params.cache.layer,
        "max_text_length": params.dataset(dataset).max_text_length,
        "image_processor": processor_settings(backbones.image_processor),
        "tokenizer": tokenizer_settings(backbones.tokenizer),
        "manifest_hash": manifest_hash(params.prepared_dir(dataset)),
        "dtype": params.cache.dtype,
    })


def short_hash(fp: dict) -> str:
    """12 hex digits of sha256 over the canonical JSON: the ``cache_fingerprint`` lineage tag."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]


def field_name(key: str, dataset: str) -> str:
    """A fingerprint key as the user knows it (the config key, where there is one)."""
    names = {
        "layer": "cache.layer",
        "dtype": "cache.dtype",
        "max_text_length": f"data.{dataset}.max_text_length",
        "manifest_hash": f"manifest_hash (data/prepared/{dataset} changed: re-prepared data)",
        "format": "format (the cache code's format version)",
    }
    if key in names:
        return names[key]
    if key.startswith("backbone."):
        return key  # backbone.vision_revision, backbone.tiny_seed, ... are config keys already
    return key


def diff(stored: dict, expected: dict, dataset: str = "") -> list[tuple[str, Any, Any]]:
    """``[(field, value in cache, value needed)]`` for every leaf that differs."""
    a, b = flatten(stored), flatten(expected)
    out = []
    for key in sorted(set(a) | set(b), key=lambda k: (list(b).index(k) if k in b else len(b), k)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            out.append((field_name(key, dataset), a.get(key, "<absent>"), b.get(key, "<absent>")))
    return out


def _short(value: Any) -> str:
    s = json.dumps(value, default=str) if not isinstance(value, str) else value
    return s if len(s) <= 70 else s[:67] + "..."


def describe_diff(fields: list[tuple[str, Any, Any]]) -> str:
    return "\n".join(f"  {name}: cache has {_short(old)}, this run needs {_short(new)}" for name, old, new in fields)
