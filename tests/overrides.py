"""The test's params as ``-S key=value`` overrides, for a stage run in a fresh process (which
would otherwise read the repository's ``params.yaml``)."""

from __future__ import annotations

import json
from typing import Any

from mitp.config.params import to_flat_dict

# sections a stage takes whole: merging them key by key into the repository's would keep its keys
WHOLE = ("sweep.space", "sweep.train")


def params_overrides(params, **extra: Any) -> dict[str, Any]:
    """Every setting of ``params`` as dotted keys (``extra`` wins: ``params_overrides(p, **{"train.epochs": 1})``)."""
    data = params.model_dump(mode="json")
    whole = {key: data["sweep"].pop(key.split(".")[1]) for key in WHOLE}
    return {**to_flat_dict(data), **whole, **extra}


def set_args(overrides: dict[str, Any]) -> list[str]:
    """``{"a.b": 1, ...}`` -> ``["-S", "a.b=1", ...]`` (JSON is YAML: a string stays a string)."""
    return [arg for key, value in overrides.items() for arg in ("-S", f"{key}={json.dumps(value)}")]
