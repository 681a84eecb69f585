"""The same seed gives the same trained model whether ``fit`` builds the tiny-random backbones
first (a first run) or finds them already built (every re-run)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from mitp.training.fit import fit
from tests.factories import SMALL_SYNTHETIC, prepare_synthetic


def _train(make_params, root, backbone_dir, name: str) -> dict[str, torch.Tensor]:
    params = make_params({**SMALL_SYNTHETIC, "backbone.dir": str(backbone_dir), "cache.enabled": False,
                          "train.max_steps_per_epoch": 2, "model.dropout": 0.5}, root=root)
    out = root / f"{name}.safetensors"
    fit(params, "synthetic", weights_out=out)
    return load_file(str(out))


def test_same_seed_same_model_with_fresh_or_built_backbones(make_params, tmp_path):
    backbone_dir = tmp_path / "backbones"  # empty: the first fit builds the pair
    prepare_synthetic(make_params({**SMALL_SYNTHETIC, "backbone.dir": str(backbone_dir)}))

    assert not backbone_dir.exists(), "nothing before the first fit may build the backbones"
    first = _train(make_params, tmp_path, backbone_dir, "first")
    assert backbone_dir.is_dir() and any(backbone_dir.iterdir()), "the first run must have built the backbones"
    rerun = _train(make_params, tmp_path, backbone_dir, "rerun")

    assert first.keys() == rerun.keys() and "prompt_v" in first
    for name in first:
        torch.testing.assert_close(rerun[name], first[name], rtol=0, atol=0, msg=name)
