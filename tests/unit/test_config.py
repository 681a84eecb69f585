"""params.yaml validation: unknown keys and impossible values are errors naming the key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mitp.config import REPO_ROOT, apply_overrides, load_params, parse_override, to_flat_dict
from mitp.errors import ConfigError


def test_repo_params_are_valid():
    params = load_params()
    assert params.datasets and params.model.kind in ("mitp", "mitp_no_hub", "late_fusion")


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"model.prompt_length": 0}, "model.prompt_length"),
        ({"model.kind": "bogus"}, "model.kind"),
        ({"model.hub_sise": 8}, "model.hub_sise"),
        ({"datasets": ["imagenet"]}, "datasets"),
        ({"cache.layer": 3, "model.interaction.start": 1}, "cache.layer"),
        ({"train.lr": -1}, "train.lr"),
        ({"backbone.preset": "custom"}, "backbone"),
    ],
)
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_params(overrides=overrides)


def test_overrides_parse_yaml_values():
    assert parse_override("train.lr=1e-4") == ("train.lr", 1e-4)
    assert parse_override("cache.enabled=false") == ("cache.enabled", False)
    assert parse_override("datasets=[synthetic, food101]") == ("datasets", ["synthetic", "food101"])
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("train.lr")


def test_overrides_do_not_mutate_and_create_sections():
    raw = {"model": {"hub_size": 8}}
    out = apply_overrides(raw, ["model.interaction.start=1"])
    assert raw == {"model": {"hub_size": 8}}
    assert out["model"]["interaction"] == {"start": 1}
    with pytest.raises(ConfigError, match="model.hub_size is not a section"):
        apply_overrides(raw, ["model.hub_size.x=1"])


def test_flat_dict():
    flat = to_flat_dict(load_params(overrides={"model.hub_size": 12}))
    assert flat["model.hub_size"] == 12 and flat["model.interaction.start"] >= 0


def test_start_beyond_backbone_depth_is_refused_by_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.info", "--dataset", "synthetic",
         "-S", "model.interaction.start=4", "-S", "cache.layer=0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert "model.interaction.start: 4 must be below the backbone depth 4" in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_key_in_params_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("model:\n  prompt_lenght: 4\n")
    with pytest.raises(ConfigError, match=r"params.yaml: model.prompt_lenght: unknown key"):
        load_params(bad)
