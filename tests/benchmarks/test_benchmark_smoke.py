"""Each benchmark's ``--smoke`` run goes through the code of its full run, down to the JSON line
it prints last (a value that JSON cannot hold fails here, not after a long run); the CUDA
rehearsal without a GPU runs its test step and prints its JSON line; train_speed's fast path
computes what the eager one does."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from mitp.config.params import REPO_ROOT


def _run(*args: str, timeout: float = 900, env: dict | None = None) -> dict:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}, **(env or {})}
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cache_speedup_smoke_prints_its_json_line():
    result = _run("benchmarks/cache_speedup.py", "--smoke")
    assert result["preset"] == "tiny-random" and result["repeats"] == 1
    assert result["measured_speedup"] > 0 and result["predicted_speedup"] > 1
    assert result["fraction_of_predicted"] == pytest.approx(result["measured_speedup"] / result["predicted_speedup"],
                                                            rel=1e-3)
    assert result["raw_samples_per_s"] > 0 and result["cache_samples_per_s"] > 0


@pytest.mark.parametrize("argv, preset, left", [
    ([], "vit-base", {}),
    (["--smoke"], "tiny-random", {}),
    (["--preset", "tiny-random"], "tiny-random", {}),
    (["-S", "backbone.preset=vit-base+bert-base", "-S", "model.hub_size=32"], "vit-base", {"model.hub_size": 32}),
    (["--smoke", "-S", "backbone.preset=vit-base+bert-base"], "vit-base", {}),
    (["--preset", "tiny-random", "-S", "backbone.preset=tiny-random"], "tiny-random", {}),
])
def test_cache_speedup_takes_the_backbones_as_params_yaml_names_them(argv, preset, left):
    from mitp.config.params import parse_override

    bench = _module("cache_speedup")
    args = bench.build_parser().parse_args(argv)
    overrides = dict(parse_override(o) for o in args.overrides)
    assert bench.resolve_preset(args, overrides) == preset
    assert overrides == left


@pytest.mark.parametrize("argv, message", [
    (["--preset", "tiny-random", "-S", "backbone.preset=vit-base+bert-base"], "disagree"),
    (["-S", "backbone.preset=custom"], "builds its own backbones"),
    (["-S", "backbone.vision=google/vit-base-patch16-224"], "builds its own backbones"),
])
def test_cache_speedup_refuses_backbones_it_does_not_build(argv, message):
    from mitp.config.params import parse_override

    bench = _module("cache_speedup")
    args = bench.build_parser().parse_args(argv)
    with pytest.raises(SystemExit, match=message):
        bench.resolve_preset(args, dict(parse_override(o) for o in args.overrides))


def test_every_benchmark_has_a_parser():
    for script in sorted((REPO_ROOT / "benchmarks").glob("*.py")):
        assert isinstance(_module(script.stem).build_parser(), argparse.ArgumentParser), script.name


def test_gpu_rehearsal_without_a_gpu_prints_its_json_line():
    result = _run("benchmarks/gpu_rehearsal.py", env={"CUDA_VISIBLE_DEVICES": ""}, timeout=600)
    assert result["cuda"] is False and result["ok"] is True
    assert result["cuda_tests"]["exit"] == 0 and result["skipped"] == ["train", "sweep", "cache_speedup"]


@pytest.mark.slow
def test_cost_smoke_prints_its_json_line():
    result = _run("benchmarks/cost.py", "--smoke", "--threads", "1")
    kinds = [(r["kind"], r["path"]) for r in result["rows"]]
    assert kinds == [("finetune", "raw"), ("pmf", "raw"), ("mitp", "raw"), ("mitp", "cache"),
                     ("late_fusion", "cache"), ("pmf", "cache")]
    assert all(r["step_s"] > 0 and r["peak_memory_mb"] > 0 for r in result["rows"])


@pytest.mark.slow
def test_sweep_efficiency_smoke_prints_its_json_line():
    result = _run("benchmarks/sweep_efficiency.py", "--smoke", timeout=1200)
    assert result["smoke"] is True and result["trials"] == 4
    assert result["parallel_efficiency"] > 0 and "overhead_s_per_trial" in result


def test_cpu_kernels_smoke_compares_the_two_settings():
    """Each setting in its own processes: each repeats bit for bit; portable runs AVX2 kernels."""
    result = _run("benchmarks/cpu_kernels.py", "--smoke")
    assert result["native_repeats_exactly"] and result["portable_repeats_exactly"]
    assert result["portable_capability"] in ("AVX2", "DEFAULT")
    assert result["native_step_ms"] > 0 and result["portable_step_ms"] > 0
    assert result["portable_speed_ratio"] == pytest.approx(result["native_step_ms"] / result["portable_step_ms"], rel=0.01)
    if result["native_capability"] == "AVX512":  # other kernels sum in another order
        assert not result["settings_agree"]


TRAIN_SPEED_KEYS = {"eager_samples_per_s", "fast_samples_per_s", "fast_eager_samples_per_s", "speedup",
                    "max_abs_logit_diff", "startup_to_first_step_s", "compiled"}
LOGIT_TOL = 1e-4  # float32, a few AdamW steps: compiled kernels reorder sums, nothing more


@pytest.mark.slow
def test_train_speed_smoke_prints_the_json_line_with_matching_logits():
    result = _run("benchmarks/train_speed.py", "--smoke", timeout=1500)
    assert TRAIN_SPEED_KEYS <= set(result)
    assert result["smoke"] is True and result["threads"] == 1
    assert result["max_abs_logit_diff"] <= LOGIT_TOL
    assert result["eager_samples_per_s"] > 0 and result["fast_samples_per_s"] > 0
    assert result["startup_to_first_step_s"] > 0


def test_scale_smoke_prints_a_row_per_stage_and_the_loader():
    result = _run("benchmarks/scale.py", "--smoke")
    keys = {"stage", "n_samples", "seconds", "per_1k_s", "peak_rss_mb", "disk_mb", "disk_estimate_mb"}
    rows = result["rows"]
    assert {r["stage"] for r in rows} == {"generate", "prepare", "cache", "train", "evaluate", "report"}  # smoke: no sweep
    for row in rows:
        assert keys <= set(row), row
        assert row["n_samples"] > 0 and row["seconds"] > 0 and row["per_1k_s"] > 0 and row["peak_rss_mb"] > 0
        assert row["disk_mb"] >= 0
        assert (row["disk_estimate_mb"] is None) == (row["stage"] != "cache")
    cache = next(r for r in rows if r["stage"] == "cache")
    assert cache["disk_mb"] > 0 and cache["disk_estimate_mb"] == pytest.approx(cache["disk_mb"], rel=0.05)
    assert [r["workers"] for r in result["loader"]] == [1, 2]
    for row in result["loader"]:
        assert row["samples_per_s"] > 0 and row["gb_per_s"] > 0


def test_loader_reads_what_the_cache_holds(tmp_path):
    """The paper-shape loader benchmark's cache is read back exactly by the real reader, in the
    consumer's thread and by reader threads."""
    import numpy as np

    from mitp.cache.reader import CachedSplit
    from mitp.training.loaders import split_loader

    bench = _module("loader")
    index = bench.write_cache(tmp_path, 300, shard_size=128, seed=3)
    split = CachedSplit(tmp_path, "train", index)
    image = np.concatenate([np.load(f) for f in split.image_files])
    text = np.concatenate([np.load(f) for f in split.text_files])
    for threads in (0, 2):
        loader = split_loader(split, 64, True, threads, __import__("torch").device("cpu"))
        seen = []
        for batch in loader:
            n_t = batch["hidden_t"].shape[1]
            assert n_t <= bench.TEXT_LENGTH
            head = batch["hidden_v"][:, 0, :2].numpy().astype(np.int64)  # each row's number, written in
            ids = head[:, 0] * 1024 + head[:, 1]
            assert np.array_equal(batch["hidden_v"].numpy(), image[ids])
            assert np.array_equal(batch["hidden_t"].numpy(), text[ids, :n_t])
            seen += ids.tolist()
        assert sorted(seen) == list(range(300))
    idx = np.array([299, 3, 128, 127, 200, 5])
    batch = split[idx]
    s = np.sort(idx)
    n_t = batch["hidden_t"].shape[1]
    assert np.array_equal(batch["hidden_v"].numpy(), image[s])
    assert np.array_equal(batch["hidden_t"].numpy(), text[s, :n_t])
