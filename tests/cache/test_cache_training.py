"""Training from the cache: the same logits as the raw path (within fp16 error), batches trimmed
to their longest text, ``fit`` end to end, and the stage entry points ``pipeline.cache`` and
``pipeline.train`` using it."""

from __future__ import annotations

import json
import pickle
import sys

import pytest
import torch

from mitp.cache import build_cache
from mitp.training.fit import fit
from mitp.training.loaders import build as build_loaders
from mitp.training.loaders import cached_loaders, raw_loaders
from mitp.training.steps import build_model


def _randomize_hub(model):
    with torch.no_grad():
        for p in model.hub.parameters() if model.hub is not None else []:
            p.normal_(0.0, 0.2)


@pytest.mark.parametrize("k, start", [(2, 2), (1, 2), (0, 0)])
def test_cached_and_uncached_logits_agree(cache_params, tiny_backbones, k, start):
    params = cache_params({"cache.layer": k, "model.interaction.start": start})
    build_cache(params, "synthetic", tiny_backbones, progress=False)
    cached = cached_loaders(params, "synthetic", tiny_backbones, torch.device("cpu"))
    raw = raw_loaders(params, "synthetic", tiny_backbones, torch.device("cpu"))
    assert cached.start_layer == k and cached.source == "cache" and raw.source == "raw"
    torch.manual_seed(0)
    model = build_model(params, tiny_backbones, len(cached.labels), cached.multi_label).eval()
    _randomize_hub(model)
    n, worst = 0, 0.0
    with torch.no_grad():
        for split in ("val", "test"):
            for cb, rb in zip(getattr(cached, split), getattr(raw, split), strict=True):
                assert torch.equal(cb["labels"], rb["labels"])
                assert torch.equal(cb["attention_mask"], rb["attention_mask"])
                got = model(**cb, start_layer=cached.start_layer).logits
                want = model(**rb).logits
                worst = max(worst, (got - want).abs().max().item())
                n += len(got)
    assert n == 48
    assert worst < 1e-2, worst  # float16 storage of the hidden states


def test_batches_are_trimmed_to_their_longest_text(built_cache, tiny_backbones):
    cache = cached_loaders(built_cache, "synthetic", tiny_backbones, torch.device("cpu"))
    split = cache.train.split
    assert split.mask.shape[1] == built_cache.data.synthetic.max_text_length
    for batch in cache.train:
        mask = batch["attention_mask"]
        assert batch["hidden_t"].shape[:2] == mask.shape
        assert mask[:, -1].any(), "the last column belongs to the batch's longest text"
        assert mask.shape[1] < split.mask.shape[1]
        assert batch["hidden_t"].dtype == torch.float16 and batch["hidden_v"].shape[1:] == (17, 64)
    assert len(cache.train) == 3


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_reader_threads_give_a_dataloaders_batches_and_random_stream(built_cache, tiny_backbones, threads):
    """Reader threads replace a DataLoader over the same split and sampler: the same batches in the
    same order, and torch's generator left where the DataLoader leaves it (so a run's dropout and
    shuffling, and its numbers, do not depend on the loader)."""
    import threading

    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    from mitp.training.loaders import ReaderThreads

    split = cached_loaders(built_cache, "synthetic", tiny_backbones, torch.device("cpu")).train.split

    def two_epochs(make):
        torch.manual_seed(7)
        loader = make(BatchSampler(RandomSampler(range(len(split))), 10, drop_last=False))
        seen = [b for _ in range(2) for b in loader]
        return seen, torch.get_rng_state()

    want, want_rng = two_epochs(lambda s: DataLoader(split, sampler=s, batch_size=None, num_workers=0))
    got, got_rng = two_epochs(lambda s: ReaderThreads(split, s, threads, prefetch=2))
    assert len(got) == len(want) == 2 * -(-len(split) // 10)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys() and all(torch.equal(g[k], w[k]) for k in w)
    assert torch.equal(got_rng, want_rng)
    # a consumer that stops early (max_steps_per_epoch) leaves no reader thread behind
    loader = ReaderThreads(split, BatchSampler(RandomSampler(range(len(split))), 4, drop_last=False), threads)
    for _ in zip(range(2), loader):
        pass
    assert not [t for t in threading.enumerate() if t.name.startswith("mitp-cache-reader")]


def test_split_pickles_without_its_data(built_cache, tiny_backbones):
    cache = cached_loaders(built_cache, "synthetic", tiny_backbones, torch.device("cpu"))
    split = cache.train.split
    split[[0, 1]]  # opens the memory maps
    clone = pickle.loads(pickle.dumps(split))
    assert clone._text is None and len(pickle.dumps(split)) < 50_000
    torch.testing.assert_close(clone[[5, 3]]["hidden_t"], split[[3, 5]]["hidden_t"])


def _argv(params, *extra):
    flat = {"data.root": params.data.root, "backbone.dir": params.backbone.dir, "cache.dir": params.cache.dir,
            "train.checkpoint_dir": params.train.checkpoint_dir, "mlflow.tracking_uri": params.mlflow.tracking_uri}
    for key in ("n_train", "n_val", "n_test", "hypotheses_per_image"):
        flat[f"data.synthetic.{key}"] = getattr(params.data.synthetic, key)
    for key in ("layer", "shard_size", "batch_size"):
        flat[f"cache.{key}"] = getattr(params.cache, key)
    flat["model.interaction.start"] = params.model.interaction.start
    flat["train.epochs"] = 1
    flat["train.batch_size"] = params.train.batch_size
    flat["sweep.space"] = "{model.prompt_length: {grid: [4, 8]}}"  # not the demo's (it sweeps the start)
    out = ["--dataset", "synthetic"]
    for k, v in flat.items():
        out += ["-S", f"{k}={v}"]
    return [*out, *extra]  # extra -S win


def test_stage_entry_points_build_and_train_from_the_cache(cache_params, tmp_path, monkeypatch, capsys):
    """``pipeline.cache`` builds the cache; ``pipeline.train`` runs ``mitp.training.fit.fit`` (cache.enabled
    is the default) and it trains from the cache, starting at layer k."""
    import pipeline.cache
    import pipeline.train

    params = cache_params()
    assert params.cache.enabled
    seen = {}

    def spy_fit(*args, **kwargs):
        seen["result"] = fit(*args, **kwargs)
        return seen["result"]

    def spy_build(params, dataset, backbones, device):
        seen["loaders"] = build_loaders(params, dataset, backbones, device)
        return seen["loaders"]

    monkeypatch.setattr("mitp.training.fit.fit", spy_fit)  # pipeline.train imports it when it runs
    monkeypatch.setattr("mitp.training.fit.loaders_mod.build", spy_build)
    monkeypatch.setattr(sys, "argv", ["pipeline.cache", *_argv(params)])
    assert pipeline.cache.main() == 0
    out = capsys.readouterr().out
    assert "expected size on disk" in out and "img/s" in out
    index = json.loads((params.features_dir("synthetic") / "index.json").read_text())
    assert index["complete"]

    monkeypatch.setattr(sys, "argv", ["pipeline.cache", *_argv(params)])
    assert pipeline.cache.main() == 0
    assert "up to date" in capsys.readouterr().out

    metrics = tmp_path / "train.json"
    monkeypatch.setattr(sys, "argv", ["pipeline.train", *_argv(params, "--metrics-out", str(metrics),
                                                               "--history-out", str(tmp_path / "h.json"))])
    assert pipeline.train.main() == 0
    m = json.loads(metrics.read_text())
    assert m["cache_fingerprint"] == index["fingerprint_hash"]
    loaders, result = seen["loaders"], seen["result"]
    assert loaders.source == "cache" and loaders.start_layer == 2
    assert result.tags["data_source"] == "cache" and result.tags["cache_fingerprint"] == index["fingerprint_hash"]
    assert [h["epoch"] for h in result.history] == [1] and 0.0 <= m["test_accuracy"] <= 1.0


def test_cache_stage_refuses_a_sweep_start_below_k(cache_params, monkeypatch):
    import pipeline.cache
    from mitp.errors import ConfigError

    params = cache_params()
    argv = _argv(params, "-S", "sweep.space={model.interaction.start: {grid: [1, 2]}}")
    monkeypatch.setattr(sys, "argv", ["pipeline.cache", *argv])
    with pytest.raises(ConfigError, match=r"sweep\.space\.model\.interaction\.start"):
        pipeline.cache.main()
    assert not params.features_dir("synthetic").exists()


def test_cache_stage_estimate_only_writes_nothing(cache_params, monkeypatch, capsys):
    import pipeline.cache

    params = cache_params()
    monkeypatch.setattr(sys, "argv", ["pipeline.cache", *_argv(params, "--estimate-only")])
    assert pipeline.cache.main() == 0
    out = capsys.readouterr().out
    assert "expected size on disk" in out and "(48 samples, 16 images)" in out and "free at" in out
    assert not params.features_dir("synthetic").exists()


def test_fit_from_the_cache_keeps_only_the_upper_layers(cache_params, monkeypatch):
    """pmf trained from a cache at layer 2 through ``fit``: the model it builds holds no
    embeddings and no layers below 2, and training runs."""
    from mitp.models import backbones
    from mitp.training import fit as train

    params = cache_params({"data.synthetic.n_train": 32, "data.synthetic.n_val": 16, "data.synthetic.n_test": 16,
                           "train.epochs": 1, "train.batch_size": 16, "model.kind": "pmf", "cache.layer": 2,
                           "model.interaction.start": 2})
    build_cache(params, "synthetic", backbones.load(params.backbone), progress=False)
    built = []
    real_build = train.build_model

    def spy(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(train, "build_model", spy)
    result = fit(params, "synthetic")
    model = built[0]
    assert model.dropped_below == 2
    kept = {n.split(".")[2] for n, _ in model.vision.named_parameters() if n.startswith("vit.layers.")}
    assert kept == {"2", "3"}
    assert result.metrics["materialised_params"] == sum(p.numel() for p in model.parameters())  # what memory holds
    assert result.metrics["total_params"] > sum(p.numel() for p in model.parameters())  # the model as counted: whole backbones
    assert 0.0 <= result.metrics["test_accuracy"] <= 1.0
