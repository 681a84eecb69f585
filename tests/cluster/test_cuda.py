"""The CUDA paths of training, run on an NVIDIA GPU: a bf16 autocast training step, cached
features pinned in host memory and copied without blocking, and peak GPU memory logged.
Without CUDA they skip (benchmarks/gpu_rehearsal.py runs them on a GPU machine)."""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="no CUDA device here; run `python benchmarks/gpu_rehearsal.py` on an NVIDIA GPU machine"),
]

CUDA = torch.device("cuda") if torch.cuda.is_available() else None


@pytest.fixture
def cuda_backbones(tiny_backbones):
    bb = copy.copy(tiny_backbones)
    bb.vision, bb.text = copy.deepcopy(bb.vision).to(CUDA), copy.deepcopy(bb.text).to(CUDA)
    return bb


def test_bf16_training_step(synthetic_prepared, cuda_backbones):
    from mitp.training import loaders as loaders_mod
    from mitp.training.steps import autocast, build_model, to_device

    params = synthetic_prepared.model_copy(deep=True)
    params.cache.enabled = False
    loaders = loaders_mod.build(params, "synthetic", cuda_backbones, CUDA)
    model = build_model(params, cuda_backbones, len(loaders.labels), loaders.multi_label).to(CUDA)
    before = [p.detach().clone() for p in model.trainable_parameters()]
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)

    batch = to_device(next(iter(loaders.train)), CUDA)
    with autocast(CUDA):
        out = model(**batch, start_layer=loaders.start_layer)
    assert out.logits.dtype == torch.bfloat16  # the matmuls ran in bf16
    assert torch.isfinite(out.loss)
    out.loss.backward()
    optimizer.step()
    params_after = list(model.trainable_parameters())
    assert all(p.dtype == torch.float32 and p.grad is not None and torch.isfinite(p.grad).all() for p in params_after)
    assert any(not torch.equal(a, b) for a, b in zip(params_after, before, strict=True))


def test_cached_features_are_pinned_and_copied_non_blocking(synthetic_prepared, cuda_backbones):
    from mitp.cache import build_cache
    from mitp.training.loaders import cached_loaders
    from mitp.training.steps import to_device

    params = synthetic_prepared
    build_cache(params, "synthetic", cuda_backbones, CUDA, progress=False)
    loaders = cached_loaders(params, "synthetic", cuda_backbones, CUDA)
    host = next(iter(loaders.train))
    tensors = {k: v for k, v in host.items() if torch.is_tensor(v)}
    assert tensors and all(v.is_pinned() for v in tensors.values())
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        moved = to_device(host, CUDA)
    stream.synchronize()
    for k, v in tensors.items():
        assert moved[k].device.type == "cuda" and torch.equal(moved[k].cpu(), v)


def test_peak_gpu_memory_is_logged(synthetic_prepared):
    from mlflow.tracking import MlflowClient

    from mitp.tracking import store as tracking
    from mitp.training.fit import fit

    params = synthetic_prepared.model_copy(deep=True)
    params.cache.enabled = False  # raw inputs: the full frozen stack runs on the GPU too
    params.train.device = "cuda"
    params.train.epochs = 1
    torch.cuda.reset_peak_memory_stats()
    result = fit(params, "synthetic", run_name="cuda-peak")
    logged = MlflowClient(tracking.tracking_uri(params.mlflow)).get_run(result.run_id).data.metrics
    assert logged["peak_memory_mb"] > 0
    assert logged["peak_memory_mb"] <= torch.cuda.get_device_properties(0).total_memory / 2**20
