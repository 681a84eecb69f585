"""The cache build: images stored once, resume after a kill to identical bytes, corrupted and
truncated shards detected (and rebuilt by the stage), the storage estimate and space check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mitp.cache import CacheCorrupt, CacheSpaceError, build_cache, open_cache, storage
from mitp.cache.storage import INDEX, lock_path, npy_bytes
from mitp.data.manifests import read_split
from mitp.models.mitp import MITP, MITPConfig


def cache_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a cache folder (the lock lives beside it, not in it)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class Killed(Exception):
    pass


def test_images_shared_by_several_samples_are_stored_once(built_cache, tiny_backbones):
    params = built_cache
    cache = open_cache(params, "synthetic", tiny_backbones)
    manifest = read_split(params.prepared_dir("synthetic"), "train")
    split = cache.split("train")
    unique = manifest.frame["image"].nunique()
    assert unique == 16 and len(manifest) == 48  # 3 hypotheses per image
    assert split.n_images == unique
    assert sum(np.load(f, mmap_mode="r").shape[0] for f in split.image_files) == unique
    # samples with the same image point at the same row, and that row holds that image's states
    images = manifest.frame["image"].tolist()
    for i in range(len(manifest)):
        for j in range(i + 1, len(manifest)):
            assert (split.image_index[i] == split.image_index[j]) == (images[i] == images[j])
    model = MITP(MITPConfig(kind="late_fusion", num_labels=3), tiny_backbones.vision, tiny_backbones.text)
    batch = split[[0, 1, 2, 3]]
    from mitp.data.dataset import RawDataset

    raw = RawDataset(manifest, tiny_backbones.image_processor)
    with torch.no_grad():
        want = model.vision_prefix(torch.stack([raw[i]["pixel_values"] for i in range(4)]), 2)
    assert (batch["hidden_v"].float() - want).abs().max().item() < 5e-3  # fp16 storage


def test_killed_run_resumes_to_identical_bytes(cache_params, tiny_backbones, tmp_path):
    reference = cache_params(root=tmp_path / "a")
    build_cache(reference, "synthetic", tiny_backbones, progress=False)

    params = cache_params(root=tmp_path / "b")
    seen = []

    def kill_after_five(unit):
        seen.append(unit.name)
        if len(seen) == 5:
            raise Killed

    with pytest.raises(Killed):
        build_cache(params, "synthetic", tiny_backbones, progress=False, on_shard=kill_after_five)
    root = params.features_dir("synthetic")
    assert json.loads((root / INDEX).read_text())["complete"] is False
    # a SIGKILL mid-shard leaves a temp file behind; the resumed run must ignore and delete it
    (root / "train" / ".text-00001.npy.abc123.tmp").write_bytes(b"half a shard")

    resumed = []
    summary = build_cache(params, "synthetic", tiny_backbones, progress=False, on_shard=lambda u: resumed.append(u.name))
    assert not set(resumed) & set(seen), "finished shards must not be computed again"
    assert len(seen) + len(resumed) == 3 * 3 + 2 * 3 + 3  # meta + image + text shards of 3 splits
    assert summary.reused_files > 0
    assert not list(root.rglob("*.tmp"))
    a, b = cache_bytes(reference.features_dir("synthetic")), cache_bytes(root)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_shard_is_detected_and_rebuilt(built_cache, tiny_backbones, damage):
    params = built_cache
    root = params.features_dir("synthetic")
    before = cache_bytes(root)
    victim = root / "val" / "image-00000.npy"
    if damage == "flip":
        _corrupt(victim)
    else:
        victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(CacheCorrupt, match="val/image-00000.npy") as err:
        open_cache(params, "synthetic", tiny_backbones, full=damage == "flip")  # a flip needs the full hash
    assert ("corrupted" if damage == "flip" else "truncated") in str(err.value)
    assert "python -m pipeline.cache --dataset synthetic" in str(err.value)

    rebuilt = []
    summary = build_cache(params, "synthetic", tiny_backbones, progress=False, full_verify=damage == "flip",
                          on_shard=lambda u: rebuilt.append(u.name))
    assert rebuilt == ["val/image-00000"] and summary.rebuilt == ["val/image-00000.npy"]
    assert cache_bytes(root) == before
    open_cache(params, "synthetic", tiny_backbones)


def test_small_files_are_hashed_at_every_open_the_shards_on_full(built_cache, tiny_backbones, monkeypatch):
    """The contract: files are renamed into place only when complete, so the float shards are
    checked by size and shape at every open and hashed on ``full``; the small files that decide
    which rows and labels are read (meta, masks) are hashed every time."""
    params = built_cache
    root = params.features_dir("synthetic")
    hashed = []
    real = storage.sha256_file
    monkeypatch.setattr(storage, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    open_cache(params, "synthetic", tiny_backbones)
    shards = {n for n in hashed if n.startswith(("image-", "text-"))}
    assert not shards and {"meta-labels.npy", "meta-ids.json", "mask-00000.npy"} <= set(hashed)
    _corrupt(root / "train" / "text-00000.npy")
    open_cache(params, "synthetic", tiny_backbones)  # same size and shape: only the full hash sees it
    with pytest.raises(CacheCorrupt, match="train/text-00000.npy: corrupted"):
        open_cache(params, "synthetic", tiny_backbones, full=True)
    labels = root / "train" / "meta-labels.npy"
    np.save(labels, np.roll(np.load(labels), 1))  # a relabelled split of the same size
    with pytest.raises(CacheCorrupt, match="train/meta-labels.npy: corrupted"):
        open_cache(params, "synthetic", tiny_backbones)


def test_estimate_is_printed_first_and_matches_the_bytes_written(cache_params, tiny_backbones):
    params = cache_params()
    said = []
    summary = build_cache(params, "synthetic", tiny_backbones, progress=False, say=said.append)
    assert said[0].startswith("feature cache for synthetic") and "expected size on disk" in said[0]
    index = json.loads((params.features_dir("synthetic") / INDEX).read_text())
    written = sum(r["bytes"] for r in index["files"].values())
    shard_bytes = sum(r["bytes"] for f, r in index["files"].items() if "meta-" not in f)
    est = summary.estimate.total
    assert shard_bytes <= est and abs(est - written) / written < 0.05


def test_too_little_disk_fails_before_writing(cache_params, tiny_backbones, monkeypatch):
    params = cache_params()
    monkeypatch.setattr(storage, "free_bytes", lambda path: 1000)
    with pytest.raises(CacheSpaceError, match="not enough disk"):
        build_cache(params, "synthetic", tiny_backbones, progress=False)
    assert not list(params.features_dir("synthetic").rglob("*.npy"))


def test_food101_estimate_at_vit_base_bert_base():
    # the docstring's example: 90,704 pairs, ViT-B/16 224 px, BERT-base at 128 tokens
    from types import SimpleNamespace

    from mitp.cache.storage import units_of

    layout = {"image_tokens": 197, "image_width": 768, "text_length": 128, "text_width": 768, "dtype": "float16"}
    n = 90_704
    plan = SimpleNamespace(split="all", n_samples=n, n_images=n, labels=np.zeros(n, np.int64), ids=["x"] * n)
    est = storage.Estimate("food101", layout)
    est.add(plan, units_of("all", n, n, 1000))
    total = est.total
    assert 45.2e9 < total < 45.4e9
    assert storage.human(total) == "45.3 GB"
    assert npy_bytes((10, 197, 768), np.float16) == 10 * 197 * 768 * 2 + 128


def test_stale_cache_is_replaced_by_the_stage(built_cache, tiny_backbones):
    params = built_cache.model_copy(deep=True)
    params.data.synthetic.max_text_length = 12
    said = []
    build_cache(params, "synthetic", tiny_backbones, progress=False, say=said.append)
    assert any("data.synthetic.max_text_length" in s for s in said)
    cache = open_cache(params, "synthetic", tiny_backbones)
    assert cache.index["layout"]["text_length"] == 12


def test_training_never_writes_into_the_cache_folder(built_cache, tiny_backbones):
    # the folder is the cache stage's DVC output: opening and verifying it must leave it unchanged
    root = built_cache.features_dir("synthetic")
    stat = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    before = cache_bytes(root)
    open_cache(built_cache, "synthetic", tiny_backbones, full=True)
    assert cache_bytes(root) == before
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stat
    assert lock_path(root).parent == root.parent


def test_one_build_at_a_time(cache_params, tiny_backbones):
    from mitp.cache import CacheBusy
    from mitp.cache.storage import build_lock

    params = cache_params()
    with build_lock(params.features_dir("synthetic")):
        with pytest.raises(CacheBusy, match="another cache run"):
            build_cache(params, "synthetic", tiny_backbones, progress=False)


def _run_killed_at_commit(params, backbones, n: int) -> int:
    """Build in a forked child that SIGKILLs itself inside the n-th shard commit (data written to
    the temp file, being hashed, not yet renamed); returns the child's wait status."""
    import os
    import signal
    import time

    pid = os.fork()
    if pid == 0:  # child
        try:
            seal, calls = storage.seal, []

            def seal_then_die(tmp):
                calls.append(1)
                if len(calls) == n:
                    os.kill(os.getpid(), signal.SIGKILL)
                return seal(tmp)

            storage.seal = seal_then_die
            build_cache(params, "synthetic", backbones, progress=False)
        finally:
            os._exit(1)  # only reached if the kill did not happen
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the forked cache build hung")


def test_sigkilled_run_resumes_to_identical_bytes(cache_params, tiny_backbones, tmp_path):
    import os
    import signal

    reference = cache_params(root=tmp_path / "a")
    build_cache(reference, "synthetic", tiny_backbones, progress=False)
    params = cache_params(root=tmp_path / "b")
    status = _run_killed_at_commit(params, tiny_backbones, n=4)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    root = params.features_dir("synthetic")
    assert list(root.rglob(".*.tmp")), "the kill left a half-written shard under a temp name"
    index = json.loads((root / INDEX).read_text())
    assert index["complete"] is False and len(index["files"]) >= 3

    build_cache(params, "synthetic", tiny_backbones, progress=False)
    assert not list(root.rglob("*.tmp"))
    assert cache_bytes(root) == cache_bytes(reference.features_dir("synthetic"))
