"""The main table's plan: every kind on every seed, and where each run's model is registered."""

from __future__ import annotations

from mitp.config.params import load_params
from mitp.training.table import plan


def _registered(overrides: dict) -> dict[tuple[str, int], str | None]:
    params = load_params(overrides={"extra_seeds": [1], **overrides})
    return {(r.kind, r.seed): r.register for r in plan(params, "synthetic", ("mitp", "pmf"))}


def test_the_run_on_seed_of_each_kind_is_registered_as_kind_dataset():
    assert _registered({}) == {("mitp", 0): "mitp-synthetic", ("mitp", 1): None,
                               ("pmf", 0): "pmf-synthetic", ("pmf", 1): None}


def test_register_table_off_registers_nothing():
    assert set(_registered({"mlflow.register_table": False}).values()) == {None}


def test_a_registry_name_takes_every_run():
    assert set(_registered({"mlflow.register_model": "mine"}).values()) == {"mine"}
