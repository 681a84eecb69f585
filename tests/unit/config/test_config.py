"""params.yaml validation: unknown keys and impossible values are errors naming the key."""

from __future__ import annotations

import re

import pytest

from mitp.config.params import (
    MODEL_KINDS,
    REPO_ROOT,
    ModelConfig,
    apply_overrides,
    load_params,
    parse_override,
    to_flat_dict,
)
from mitp.errors import ConfigError


def test_repo_params_are_valid():
    params = load_params()
    assert params.datasets and params.model.kind in MODEL_KINDS


def test_model_kinds_are_the_one_list():
    for kind in MODEL_KINDS:
        assert ModelConfig(kind=kind).kind == kind
    listed = ", ".join(f"'{k}'" for k in list(MODEL_KINDS)[:-1]) + f" or '{list(MODEL_KINDS)[-1]}'"
    with pytest.raises(ConfigError, match=re.escape(f"model.kind: Input should be {listed}")):
        load_params(overrides={"model.kind": "bogus"})


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"model.prompt_length": 0}, "model.prompt_length"),
        ({"model.kind": "bogus"}, "model.kind"),
        ({"model.hub_sise": 8}, "model.hub_sise"),
        ({"datasets": ["imagenet"]}, "datasets"),
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


def test_unknown_key_in_params_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("model:\n  prompt_lenght: 4\n")
    with pytest.raises(ConfigError, match=r"params.yaml: model.prompt_lenght: unknown key"):
        load_params(bad)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n"])
def test_empty_or_comment_only_params_file_is_an_error(tmp_path, text):
    """Not a silent run on the built-in defaults (a truncated file would go unnoticed)."""
    bad = tmp_path / "params.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=r"params\.yaml: no settings \(the file is empty or only comments\)"):
        load_params(bad)


def test_duplicate_key_is_an_error_naming_key_and_line(tmp_path):
    """YAML would let the second ``model:`` silently replace the first section."""
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: 0\nmodel:\n  prompt_length: 4\ntrain:\n  epochs: 2\nmodel:\n  hub_size: 8\n")
    with pytest.raises(ConfigError, match=r"params\.yaml: line 6: duplicate key 'model'"):
        load_params(bad)
    with pytest.raises(ConfigError, match=r"override sweep\.space: line 1: duplicate key 'a'"):
        parse_override("sweep.space={a: 1, a: 2}")


@pytest.mark.parametrize("key, value", [("train.lr", ".inf"), ("train.lr", "inf"), ("train.weight_decay", ".nan"),
                                        ("model.tau_init", "-.inf"), ("sweep.asha.reduction_factor", ".inf"),
                                        ("data.mmimdb.download.timeout_s", ".inf")])
def test_float_fields_refuse_inf_and_nan(key, value):
    with pytest.raises(ConfigError, match=re.escape(key) + ": Input should be a finite number"):
        load_params(overrides=[f"{key}={value}"])


def test_quoted_override_values_stay_strings():
    assert parse_override("mlflow.experiment='1.0'") == ("mlflow.experiment", "1.0")
    assert parse_override('mlflow.experiment="1e-3"') == ("mlflow.experiment", "1e-3")
    assert load_params(overrides=["mlflow.experiment='1.0'"]).mlflow.experiment == "1.0"
    # unquoted numbers are numbers, also where YAML 1.1 would read a string (no dot)
    assert parse_override("train.lr=1e-3") == ("train.lr", 1e-3)
    assert parse_override("train.lr=-2E+4") == ("train.lr", -2e4)
    assert parse_override("sweep.space={train.lr: {loguniform: [1e-4, 3e-3]}}")[1] == {
        "train.lr": {"loguniform": [1e-4, 3e-3]}}
    assert parse_override("mlflow.experiment=mitp_no_hub") == ("mlflow.experiment", "mitp_no_hub")
    assert parse_override("model.hub_size=64") == ("model.hub_size", 64)


def test_extra_seeds_listed_twice_is_an_error():
    from mitp.config.params import load_params
    from mitp.errors import ConfigError

    with pytest.raises(ConfigError, match="extra_seeds: .*lists a seed twice"):
        load_params(overrides={"extra_seeds": [1, 1]})
    assert load_params(overrides={"seed": 1}).extra_seeds == [1, 2]  # a table run sets seed to one of them


def test_shown_paths_do_not_depend_on_the_checkout():
    """What outputs record (prepare reports, the sweep's experiment path, MLflow dataset sources):
    a path inside the repository relative to it, so DVC hashes match in every clone."""
    from mitp.config.params import REPO_ROOT, shown_path

    assert shown_path(REPO_ROOT / "data" / "raw" / "synthetic") == "data/raw/synthetic"
    assert shown_path(str(REPO_ROOT / "ray_results" / "x")) == "ray_results/x"
    assert shown_path("/elsewhere/data") == "/elsewhere/data"  # outside: as given
    assert shown_path("data/raw") == "data/raw" and shown_path("s3://bucket/ray") == "s3://bucket/ray"


# --------------------------------------------------------------------------------------------
# Issue 21: an alias bomb in -S, values the schema let through that failed later
# --------------------------------------------------------------------------------------------

ALIAS_BOMB = "[" + ", ".join(["&a0 [1, 1]"] + [f"&a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, 30)]) + "]"


def test_yaml_alias_bomb_in_an_override_is_refused_at_once():
    """~500 characters standing for 2**30 items: it reached 4 GB and rendered the whole expansion."""
    import time

    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"override seed: line 1: a YAML anchor \(&name\) is not allowed") as err:
        load_params(overrides=[f"seed={ALIAS_BOMB}"])
    assert time.perf_counter() - t0 < 5 and len(str(err.value)) < 400
    with pytest.raises(ConfigError, match=r"alias \(\*name\)"):
        parse_override("model.hub_size=*a")
    # the twin: flow-style lists and mappings still parse
    assert parse_override("sweep.space={model.hub_size: [16, 64]}")[1] == {"model.hub_size": [16, 64]}


def test_alias_bomb_in_a_params_file_is_refused_by_its_expanded_size(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text((REPO_ROOT / "params.yaml").read_text() + f"\nbomb: {ALIAS_BOMB}\n")
    with pytest.raises(ConfigError, match="aliases expand to more than") as err:
        load_params(p)
    assert len(str(err.value)) < 400
    ok = tmp_path / "ok.yaml"  # the twin: a small alias in a file is fine
    ok.write_text((REPO_ROOT / "params.yaml").read_text().replace("\nseed: 0", "\nseed: &s 0") + "\nx_seed_copy: *s\n")
    with pytest.raises(ConfigError, match="x_seed_copy: unknown key"):
        load_params(ok)


def test_a_long_bad_value_is_quoted_short():
    big = "[" + ", ".join(["1"] * 50_000) + "]"
    with pytest.raises(ConfigError) as err:
        load_params(overrides=[f"seed={big}"])
    assert "seed: Input should be a valid integer" in str(err.value) and len(str(err.value)) < 400


@pytest.mark.parametrize(("override", "key"), [
    ("seed=-1", "seed"),
    ("seed=1180591620717411303424", "seed"),  # 2**70
    ("seed=4294967296", "seed"),  # 2**32: numpy's seeding refuses it
    ("extra_seeds=[1, -2]", "extra_seeds.1"),
    ("model.hub_size=1000000000", "model.hub_size"),
    ("model.prompt_length=100000", "model.prompt_length"),
    ("train.batch_size=10000000", "train.batch_size"),
    ("cache.shard_size=1000000000", "cache.shard_size"),
    ("data.synthetic.n_train=1000000000000", "data.synthetic.n_train"),
    ("data.mmimdb.max_text_length=100000", "data.mmimdb.max_text_length"),
])
def test_out_of_range_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"params.yaml: {re.escape(key)}: Input should be"):
        load_params(overrides=[override])


def test_the_paper_settings_and_the_seed_range_ends_pass():
    p = load_params(overrides=["seed=4294967295", "extra_seeds=[0, 1]", "model.hub_size=384",
                               "model.prompt_length=16", "data.mmimdb.max_text_length=256"])
    assert (p.seed, p.model.hub_size, p.model.prompt_length) == (2**32 - 1, 384, 16)
