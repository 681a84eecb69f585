"""The layer rules every stage applies after loading params: which layers a run can change
(over the kinds and the sweep space in use), and ``cache.layer`` k <= every one of them, so
the cached layers never see a prompt. The cache build, ``fit`` and every stage's loading
(:func:`check_params`) call these; the sweep checks each trial with them too.
"""

from __future__ import annotations

from typing import Any

from mitp.config.params import MODEL_KINDS, Params
from mitp.config.space import normalize_space, normalize_train
from mitp.errors import ConfigError
from mitp.models.backbones import check_depth, depths

START_KEY = "model.interaction.start"
FUSION_KEY = "model.pmf.n_fusion_layers"


def starts_in_use(params: Params) -> set[int]:
    """Every first changed layer a run can use, over the kinds in use (``MODEL_KINDS``): each
    ``model.interaction.start`` the config and space give (a range by its ends) for MITP, depth -
    ``model.pmf.n_fusion_layers`` for PMF; empty if no kind changes a cacheable layer."""
    dims = normalize_space(params.sweep.space)

    def in_use(key: str, configured: Any) -> list[Any]:  # the configured value and the space's candidates
        return [configured, *(dims[key].candidates() if key in dims else [])]

    changes = {MODEL_KINDS.get(kind, "interaction") for kind in in_use("model.kind", params.model.kind)}
    starts: set[int] = set()
    if "interaction" in changes:
        values = in_use(START_KEY, params.model.interaction.start)
        if bad := [v for v in values if not isinstance(v, int) or isinstance(v, bool)]:
            raise ConfigError(f"sweep.space.{START_KEY}: {bad[0]!r} is not a layer number")
        starts |= set(values)
    if "top" in changes:
        depth = min(_depths(params))
        fusion = in_use(FUSION_KEY, params.model.pmf.n_fusion_layers)
        starts |= {depth - f for f in fusion if isinstance(f, int)}
    return starts


def check_cache_layer(params: Params) -> None:
    """``cache.layer`` k <= every start in use (the cached layers must never see a prompt)."""
    if params.cache.enabled and params.model.kind == "finetune":
        raise ConfigError("cache.enabled: model.kind=finetune trains the backbones end to end, so it cannot "
                          "train from the feature cache; set cache.enabled=false")
    starts = starts_in_use(params)
    k = params.cache.layer
    if not params.cache.enabled or not starts or min(starts) >= k:
        return
    changes = MODEL_KINDS[params.model.kind]
    if changes == "interaction" and params.model.interaction.start < k:
        raise ConfigError(f"cache.layer: {k} is above model.interaction.start {params.model.interaction.start}; "
                          "the cached layers must never see a prompt")
    if changes == "top" and (first := params.model.first_interaction_layer(min(_depths(params)))) < k:
        raise ConfigError(f"cache.layer: {k} is above the first PMF fusion layer {first} (the depth minus "
                          "model.pmf.n_fusion_layers); the cached layers must never see a prompt")
    key = START_KEY if START_KEY in normalize_space(params.sweep.space) else FUSION_KEY
    raise ConfigError(f"sweep.space.{key}: value {min(starts)} is below cache.layer {k}; the cached layers "
                      f"must never see a prompt (the cache serves the sweep too: set cache.layer to at most "
                      f"{min(starts)} and rebuild the cache, or override sweep.space for a run that does not sweep)")


def _depths(params: Params) -> tuple[int, int]:
    return depths(params.backbone)


def check_params(params: Params) -> None:
    """What every stage checks after loading: sweep settings, backbone depth, cache layer."""
    normalize_train(params.sweep.train)
    check_depth(params)
    check_cache_layer(params)  # parses sweep.space
