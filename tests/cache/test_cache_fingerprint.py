"""Training never uses a cache built for another configuration, a missing or an incomplete one;
the error names the differing field, or the command that builds the cache. And k is checked
against every interaction start the train and sweep configs use."""

from __future__ import annotations

import pytest
import torch

from mitp.cache import (
    CacheIncomplete,
    CacheMismatch,
    CacheMissing,
    build_cache,
)
from mitp.cache.fingerprint import fingerprint, short_hash
from mitp.errors import ConfigError, UserError
from mitp.models.rules import check_cache_layer
from mitp.training.loaders import cached_loaders


@pytest.mark.parametrize("change, field", [
    ({"cache.layer": 1}, "cache.layer"),
    ({"data.synthetic.max_text_length": 12}, "data.synthetic.max_text_length"),
    ({"cache.dtype": "float32"}, "cache.dtype"),
    ({"backbone.tiny_seed": 1}, "backbone.tiny_seed"),
])
def test_fingerprint_mismatch_is_refused_naming_the_field(built_cache, tiny_backbones, change, field):
    params = built_cache.model_copy(deep=True)
    section, _, key = next(iter(change)).rpartition(".")
    node = params
    for part in section.split("."):
        node = getattr(node, part)
    setattr(node, key, next(iter(change.values())))
    with pytest.raises(CacheMismatch) as err:
        cached_loaders(params, "synthetic", tiny_backbones, torch.device("cpu"))
    assert isinstance(err.value, UserError)
    assert [f for f, _, _ in err.value.fields] == [field]
    assert field in str(err.value).splitlines()[0]
    assert "python -m pipeline.cache --dataset synthetic" in str(err.value)


def test_changed_manifests_make_the_cache_stale(built_cache, tiny_backbones):
    import pandas as pd

    params = built_cache
    path = params.prepared_dir("synthetic") / "val.parquet"
    frame = pd.read_parquet(path)
    frame.loc[0, "text"] = "a red circle"
    frame.to_parquet(path, index=False)
    with pytest.raises(CacheMismatch, match="manifest_hash"):
        cached_loaders(params, "synthetic", tiny_backbones, torch.device("cpu"))


def test_image_processor_settings_are_part_of_the_fingerprint(built_cache, tiny_backbones):
    import copy
    from dataclasses import replace

    processor = copy.deepcopy(tiny_backbones.image_processor)
    processor.image_mean = [0.4, 0.4, 0.4]
    other = replace(tiny_backbones, image_processor=processor)
    with pytest.raises(CacheMismatch, match="image_processor.image_mean"):
        cached_loaders(built_cache, "synthetic", other, torch.device("cpu"))


def test_fingerprint_is_stable_and_short(cache_params, tiny_backbones):
    params = cache_params()
    a, b = fingerprint(params, "synthetic", tiny_backbones), fingerprint(params, "synthetic", tiny_backbones)
    assert a == b and len(short_hash(a)) == 12
    for key in ("backbone", "layer", "max_text_length", "image_processor", "manifest_hash", "images_hash", "dtype",
                "format"):
        assert key in a
    assert a["backbone"]["tiny_seed"] == 0 and a["image_processor"]["size"] == {"height": 32, "width": 32}


def test_missing_cache_names_the_command(cache_params, tiny_backbones):
    params = cache_params()
    with pytest.raises(CacheMissing, match=r"python -m pipeline\.cache --dataset synthetic"):
        cached_loaders(params, "synthetic", tiny_backbones, torch.device("cpu"))


def test_incomplete_cache_is_refused(cache_params, tiny_backbones):
    params = cache_params()

    class Stop(Exception):
        pass

    def stop(_unit):
        raise Stop

    with pytest.raises(Stop):
        build_cache(params, "synthetic", tiny_backbones, progress=False, on_shard=stop)
    with pytest.raises(CacheIncomplete, match="resume it with `python -m pipeline.cache --dataset synthetic"):
        cached_loaders(params, "synthetic", tiny_backbones, torch.device("cpu"))


# -- k against the train and sweep starts -------------------------------------------------------


@pytest.mark.parametrize("space", [
    {"model.interaction.start": {"grid": [3, 1]}},
    {"model.interaction.start": {"grid_search": [1, 2]}},
    {"model.interaction.start": {"choice": [2, 1]}},
    {"model.interaction.start": [1, 3]},
    {"model.interaction.start": 1},
    {"model.interaction.start": {"randint": [1, 4]}},
    {"model": {"interaction": {"start": {"grid": [1]}}}},
])
def test_sweep_start_below_cache_layer_names_the_key(make_params, space):
    params = make_params({"cache.layer": 2, "model.interaction.start": 2, "sweep.space": space})
    with pytest.raises(ConfigError, match=r"sweep\.space\.model\.interaction\.start: value 1 is below cache\.layer 2"):
        check_cache_layer(params)


@pytest.mark.parametrize("space", [
    {"model.interaction.start": {"grid": [2, 3]}, "model.hub_size": {"choice": [8, 16]}},
    {"model.interaction.start": [2, 3]},
    {},
])
def test_sweep_starts_at_or_above_cache_layer_pass(make_params, space):
    check_cache_layer(make_params({"cache.layer": 2, "model.interaction.start": 2, "sweep.space": space}))


def test_unreadable_sweep_values_are_errors_naming_the_key(make_params):
    # (the config's own sweep.space validation may catch these first: either way the key is named)
    with pytest.raises(ConfigError, match=r"model\.interaction\.start.*\{grid: \.\.\.\} needs a"):
        check_cache_layer(make_params({"cache.layer": 1, "model.interaction.start": 2,
                                       "sweep.space": {"model.interaction.start": {"grid": 3}}}))
    with pytest.raises(ConfigError, match=r"sweep\.space.*cache\.layer"):
        check_cache_layer(make_params({"sweep.space": {"cache.layer": [0, 1]}}))


def test_disabled_cache_skips_the_sweep_check(make_params):
    params = make_params({"cache.enabled": False, "cache.layer": 2, "model.interaction.start": 2,
                          "sweep.space": {"model.interaction.start": [0, 1]}})
    check_cache_layer(params)
