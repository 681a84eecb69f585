"""params.yaml spells out every key of the schema, so `dvc exp run -S key=value` can set any of
them and nothing has a default that lives only in code."""

from __future__ import annotations

import copy

import pytest
import yaml
from pydantic import BaseModel

from mitp.config.params import DEFAULT_PARAMS, Params


def schema_leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted keys of every value of the schema (sections are walked, not listed)."""
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += schema_leaf_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def missing_keys(raw: dict) -> list[str]:
    def present(key: str) -> bool:
        node = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    return [k for k in schema_leaf_keys(Params) if not present(k)]


def _raw() -> dict:
    return yaml.safe_load(DEFAULT_PARAMS.read_text())


def test_schema_walk_reaches_nested_sections():
    keys = schema_leaf_keys(Params)
    for key in ("seed", "model.interaction.start", "sweep.asha.grace_period", "data.mmimdb.download.retries",
                "data.synthetic.n_train", "sweep.space"):
        assert key in keys
    assert "model.interaction" not in keys and "data" not in keys  # sections are not values


def test_every_schema_key_is_in_params_yaml():
    assert missing_keys(_raw()) == []


@pytest.mark.parametrize("key", ["ray.num_cpus", "train.max_steps_per_epoch", "sweep.asha.reduction_factor",
                                 "data.snli_ve.download.timeout_s", "model.tau_init"])
def test_a_removed_key_is_reported(key):
    raw = copy.deepcopy(_raw())
    node = raw
    *path, last = key.split(".")
    for part in path:
        node = node[part]
    del node[last]
    assert missing_keys(raw) == [key]



# `dvc exp run -S key=value` rewrites params.yaml with DVC's own writer (dvc.utils.hydra.apply_overrides:
# ruamel round trip, every list and null re-emitted); the file is kept in the form it writes back.
def _dvc_set(tmp_path, overrides: list[str]) -> tuple[list[str], list[str]]:
    from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

    copy_ = tmp_path / "params.yaml"
    copy_.write_text(DEFAULT_PARAMS.read_text(encoding="utf-8"), encoding="utf-8")
    dvc_apply_overrides(copy_, overrides)
    return DEFAULT_PARAMS.read_text(encoding="utf-8").splitlines(), copy_.read_text(encoding="utf-8").splitlines()


def _changed(before: list[str], after: list[str]) -> list[str]:
    import difflib

    return [ln for ln in difflib.ndiff(before, after) if ln.startswith(("- ", "+ "))]


def test_dvc_writes_params_yaml_back_unchanged(tmp_path):
    before, after = _dvc_set(tmp_path, ["seed=0"])  # a key set to its own value
    assert _changed(before, after) == []


@pytest.mark.parametrize(("override", "key", "value", "removed", "added"), [
    ("seed=7", "seed", 7, 1, 1),                                            # top level
    ("model.hub_size=32", "model.hub_size", 32, 1, 1),                      # nested
    ("train.lr=0.001", "train.lr", 0.001, 1, 1),                            # a float written as 2.0e-3
    ("backbone.vision=org/vit", "backbone.vision", "org/vit", 1, 1),        # a null (empty) value
    ("data.mmimdb.download.retries=3", "data.mmimdb.download.retries", 3, 1, 1),  # inside a flow mapping
    ("extra_seeds=[1,5]", "extra_seeds", [1, 5], 1, 1),                     # a list: one item changed
    ("extra_seeds=[1,2,3]", "extra_seeds", [1, 2, 3], 0, 1),                # a list: one item added
    ("datasets=[synthetic,mmimdb]", "datasets", ["synthetic", "mmimdb"], 0, 1),
])
def test_dvc_set_param_changes_one_line(tmp_path, override, key, value, removed, added):
    before, after = _dvc_set(tmp_path, [override])
    changed = _changed(before, after)
    assert (sum(ln.startswith("- ") for ln in changed), sum(ln.startswith("+ ") for ln in changed)) == (removed, added), \
        "\n".join(changed)
    old, new = yaml.safe_load("\n".join(before)), yaml.safe_load("\n".join(after))
    node = new
    for part in key.split("."):
        node = node[part]
    assert node == value
    # the rest of the file loads to the same values, and validates
    node = old
    *path, last = key.split(".")
    for part in path:
        node = node[part]
    node[last] = value
    assert old == new
    Params.model_validate(new)


def test_every_commented_key_keeps_its_comment_after_a_dvc_write(tmp_path):
    before, after = _dvc_set(tmp_path, ["model.hub_size=32"])
    assert sum("#" in ln for ln in before) == sum("#" in ln for ln in after)
