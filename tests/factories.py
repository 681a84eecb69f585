"""The one factory of test inputs: params whose every output lies under a temp folder, and a
small synthetic set generated and prepared there. Fixtures (tests/conftest.py and the layers'
conftests) are thin wrappers around these functions."""

from __future__ import annotations

from pathlib import Path


def tmp_overrides(root: Path) -> dict:
    """Overrides that send every output of a run under ``root`` (never the repo's data/)."""
    return {
        "data.root": str(root / "data"),
        "data.locks_dir": str(root / "locks"),
        "backbone.dir": str(root / "backbones"),
        "cache.dir": str(root / "features"),
        "train.checkpoint_dir": str(root / "runs"),
        "mlflow.tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "ray.storage_path": str(root / "ray_results"),
        # independent of the demo sweep in params.yaml (which also sweeps the interaction start)
        "sweep.space": {"model.prompt_length": {"grid": [4, 8]}},
        "sweep.num_samples": 1,
        # compiling takes longer than these tiny runs train; benchmarks/train_speed.py covers it
        "train.compile": False,
    }


SMALL_SYNTHETIC = {
    "data.synthetic.n_train": 96,
    "data.synthetic.n_val": 48,
    "data.synthetic.n_test": 48,
    "train.epochs": 1,
    "train.batch_size": 32,
}


def params_under(root: Path, backbones_dir: Path, overrides: dict | None = None):
    """Validated Params writing under ``root``, sharing the tiny-random backbones in ``backbones_dir``."""
    from mitp.config.params import load_params

    return load_params(overrides={**tmp_overrides(root), "backbone.dir": str(backbones_dir), **(overrides or {})})


def prepare_synthetic(params, reuse: bool = False):
    """Generate and prepare the synthetic set of ``params`` (``reuse``: unless it is already
    prepared there); returns ``params``."""
    from mitp.data.prepare import prepare_dataset
    from mitp.data.synthetic import generate

    if not (reuse and (params.prepared_dir("synthetic") / "labels.json").exists()):
        generate(params)
        prepare_dataset(params, "synthetic")
    return params
