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

