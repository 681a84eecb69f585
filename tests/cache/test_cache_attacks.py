"""Attacks on the cache's trust: regenerated images under the same paths, an edited index, an
image deleted after prepare. None of them may end in training on stale or fewer features."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_cache_build import cache_bytes

from mitp.cache import CacheCorrupt, CacheInputError, CacheMismatch, build_cache, open_cache
from mitp.data.manifests import manifest_hash, read_split
from mitp.training.loaders import cached_loaders


def _image_files(params) -> list[Path]:
    manifests = [read_split(params.prepared_dir("synthetic"), s) for s in ("train", "val", "test")]
    return sorted({m.image_path(i).resolve() for m in manifests for i in range(len(m))})


def _drop_digests(params) -> None:
    """Manifests without prepare's ``image_sha256`` column (an older prepare, or written by hand):
    the cache then hashes the image files itself."""
    for split in ("train", "val", "test"):
        path = params.prepared_dir("synthetic") / f"{split}.parquet"
        read_split(params.prepared_dir("synthetic"), split).frame.drop(columns="image_sha256").to_parquet(path, index=False)


def test_regenerated_images_under_the_same_paths_make_the_cache_stale(cache_params, tiny_backbones):
    params = cache_params()
    _drop_digests(params)
    build_cache(params, "synthetic", tiny_backbones, progress=False)
    root = params.features_dir("synthetic")
    before_manifests, before_cache = manifest_hash(params.prepared_dir("synthetic")), cache_bytes(root)
    for path in _image_files(params):  # new pixels, same paths, same manifests
        with Image.open(path) as img:
            Image.eval(img.convert("RGB"), lambda v: 255 - v).save(path, quality=95)
    assert manifest_hash(params.prepared_dir("synthetic")) == before_manifests

    with pytest.raises(CacheMismatch, match="images_hash") as err:
        cached_loaders(params, "synthetic", tiny_backbones, torch.device("cpu"))
    assert [f for f, _, _ in err.value.fields] == ["images_hash (image files changed content since the cache was built)"]

    said = []
    build_cache(params, "synthetic", tiny_backbones, progress=False, say=said.append)
    assert any("images_hash" in s for s in said), said
    after = cache_bytes(root)
    assert after["train/image-00000.npy"] != before_cache["train/image-00000.npy"]
    assert after["train/text-00000.npy"] == before_cache["train/text-00000.npy"]  # same texts, same states
    open_cache(params, "synthetic", tiny_backbones)


def test_a_regenerated_synthetic_set_with_another_image_size_is_not_trusted(built_cache, tiny_backbones, cache_params):
    # the set regenerated (and re-prepared) at 40 px in place: the image processor resizes to
    # 32 px either way and ids, paths, texts and labels are the same; only the image bytes differ,
    # and prepare's recorded digests with them
    before = read_split(built_cache.prepared_dir("synthetic"), "train").frame
    cache_params({"data.synthetic.image_size": 40})
    after = read_split(built_cache.prepared_dir("synthetic"), "train").frame
    assert before.drop(columns="image_sha256").equals(after.drop(columns="image_sha256"))
    with pytest.raises(CacheMismatch, match="images_hash") as err:
        open_cache(built_cache, "synthetic", tiny_backbones)
    assert {f.split(" ")[0] for f, _, _ in err.value.fields} == {"manifest_hash", "images_hash"}, err.value.fields


@pytest.mark.parametrize("edit, named", [
    (lambda ix: ix["splits"]["train"].update(n_samples=40), "splits.train.n_samples: 40, the manifests give 48"),
    (lambda ix: ix["splits"]["val"].update(text_shards=2), "splits.val.text_shards: 2, the manifests give 3"),
    (lambda ix: ix["layout"].update(shard_size=20), "splits.train.image_shards: 2, the manifests give 1"),
    (lambda ix: ix["files"].pop("test/text-00002.npy"), "files: test/text-00002.npy is not recorded"),
    (lambda ix: ix["labels"].reverse(), "labels: differ from labels.json"),
])
def test_an_edited_index_is_refused_naming_the_field(built_cache, tiny_backbones, edit, named):
    params = built_cache
    path = params.features_dir("synthetic") / "index.json"
    index = json.loads(path.read_text())
    edit(index)
    path.write_text(json.dumps(index))
    with pytest.raises(CacheCorrupt) as err:
        cached_loaders(params, "synthetic", tiny_backbones, torch.device("cpu"))
    message = str(err.value)
    assert str(path) in message and named in message, message
    assert "python -m pipeline.cache --dataset synthetic" in message
    # the stage repairs the index from the manifests and the files it can trust
    build_cache(params, "synthetic", tiny_backbones, progress=False)
    assert len(cached_loaders(params, "synthetic", tiny_backbones, torch.device("cpu")).train.split) == 48


def test_a_shard_replaced_with_fewer_rows_and_a_matching_record_is_refused(built_cache, tiny_backbones):
    import numpy as np

    from mitp.cache.storage import seal

    params = built_cache
    root = params.features_dir("synthetic")
    shard = root / "train" / "image-00000.npy"
    array = np.load(shard)
    np.save(shard, np.concatenate([array[:5], array[:5]])[:9])  # 9 rows where the unit has 10
    path = root / "index.json"
    index = json.loads(path.read_text())
    index["files"]["train/image-00000.npy"] = seal(shard)  # the record agrees with the file
    path.write_text(json.dumps(index))
    with pytest.raises(CacheCorrupt, match=r"train/image-00000.npy: shape \(9, 17, 64\), the index implies \(10, 17, 64\)"):
        open_cache(params, "synthetic", tiny_backbones)


def _stage(params, *extra: str) -> subprocess.CompletedProcess:
    flat = {"data.root": params.data.root, "backbone.dir": params.backbone.dir, "cache.dir": params.cache.dir,
            "mlflow.tracking_uri": params.mlflow.tracking_uri, "cache.layer": params.cache.layer,
            "model.interaction.start": params.model.interaction.start, "cache.shard_size": params.cache.shard_size,
            "cache.batch_size": params.cache.batch_size,
            "sweep.space": "{model.prompt_length: {grid: [4, 8]}}"}
    for key in ("n_train", "n_val", "n_test", "hypotheses_per_image"):
        flat[f"data.synthetic.{key}"] = getattr(params.data.synthetic, key)
    argv = [a for k, v in flat.items() for a in ("-S", f"{k}={v}")]
    return subprocess.run([sys.executable, "-m", "pipeline.cache", "--dataset", "synthetic", *argv, *extra],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_an_image_deleted_after_prepare_fails_the_stage_with_one_line(cache_params):
    params = cache_params()
    victim = _image_files(params)[1]
    victim.unlink()
    done = _stage(params)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(victim) in errors[0] and "missing" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    root = params.features_dir("synthetic")
    assert not root.exists() or not any(root.rglob("*.npy")), "nothing is written before the inputs check"


def test_an_image_deleted_after_prepare_is_named_by_the_build(cache_params, tiny_backbones):
    params = cache_params()
    victim = _image_files(params)[0]
    victim.unlink()
    with pytest.raises(CacheInputError, match=re.escape(str(victim)) + r": image listed in .*/test\.parquet is missing"):
        build_cache(params, "synthetic", tiny_backbones, progress=False)
    assert not any(params.features_dir("synthetic").rglob("*.npy"))


@pytest.mark.parametrize("workers", [0, 1])  # decoding in the main process (CPU), in workers (GPU)
def test_an_image_changed_during_the_build_is_not_stored(cache_params, tiny_backbones, monkeypatch, workers):
    import mitp.cache.build as build_mod

    monkeypatch.setattr(build_mod, "cuda_workers", lambda device, most: workers)
    params = cache_params()
    victim = _image_files(params)[0]  # an image of the test split, cached last
    assert victim.name.startswith("test")

    def change_it(unit):
        if unit.kind == "meta" and unit.split == "train":
            with Image.open(victim) as img:
                Image.eval(img.convert("RGB"), lambda v: 255 - v).save(victim, quality=95)

    with pytest.raises(CacheInputError, match="no longer match the digest the cache was planned with") as err:
        build_cache(params, "synthetic", tiny_backbones, progress=False, on_shard=change_it)
    assert len(str(err.value).splitlines()) == 1 and str(err.value).startswith(str(victim))
    root = params.features_dir("synthetic")
    assert not list((root / "test").glob("image-*.npy")), "no shard holds the states of changed bytes"
    assert json.loads((root / "index.json").read_text())["complete"] is False


def _record_digests(params) -> None:
    """prepare records each row's image sha256 in the manifests (the cache trusts that record)."""

    from mitp.cache.storage import sha256_file

    for split in ("train", "val", "test"):
        manifest = read_split(params.prepared_dir("synthetic"), split)
        assert manifest.frame["image_sha256"].tolist() == [sha256_file(manifest.image_path(i))
                                                           for i in range(len(manifest))]


def test_recorded_digests_spare_training_the_image_reads_and_the_build_checks_them(cache_params, tiny_backbones,
                                                                                   tmp_path):
    params = cache_params()
    _record_digests(params)
    build_cache(params, "synthetic", tiny_backbones, progress=False)
    images = _image_files(params)
    images[0].unlink()  # training from the cache needs no image file: the manifests carry the digests
    open_cache(params, "synthetic", tiny_backbones)
    with pytest.raises(CacheInputError, match=re.escape(str(images[0])) + ": image listed in .* is missing"):
        build_cache(params, "synthetic", tiny_backbones, progress=False, force=True)

    params = cache_params(root=tmp_path / "b")  # images replaced after prepare recorded them
    _record_digests(params)
    victim = next(p for p in _image_files(params) if p.name.startswith("train"))  # in train/image-00000
    with Image.open(victim) as img:
        Image.eval(img.convert("RGB"), lambda v: 255 - v).save(victim, quality=95)
    with pytest.raises(CacheInputError, match=re.escape(str(victim)) + ": the image's bytes no longer match"):
        build_cache(params, "synthetic", tiny_backbones, progress=False)
    assert not (params.features_dir("synthetic") / "train" / "image-00000.npy").exists()


# --------------------------------------------------------------------------------------------
# Issue 21: a disk that fills up during the build (the space check saw enough free)
# --------------------------------------------------------------------------------------------


def _fill_disk_at(monkeypatch, nth: int) -> list[int]:
    """``os.posix_fallocate`` reports ENOSPC from its ``nth`` call on, as a disk another writer
    filled would; returns the calls' sizes."""
    import errno
    import os

    calls: list[int] = []

    def fallocate(fd, offset, length):
        calls.append(length)
        if len(calls) >= nth:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    return calls


def test_a_disk_filling_up_mid_build_is_a_clear_error_and_leaves_no_partial_shard(cache_params, tiny_backbones,
                                                                                   monkeypatch):
    """Shards were written through memory-mapped sparse files: a full disk killed the build with
    SIGBUS (exit 135, no message). Now their space is reserved before a row is computed."""
    from mitp.cache import CacheSpaceError

    params = cache_params()
    calls = _fill_disk_at(monkeypatch, 3)
    with pytest.raises(CacheSpaceError, match=r"disk full while writing the feature cache at .*train/text-00000\.npy"
                                              r".*cache\.dir") as err:
        build_cache(params, "synthetic", tiny_backbones, progress=False)
    assert len(str(err.value).splitlines()) == 1 and len(calls) == 3
    root = params.features_dir("synthetic")
    assert not list(root.rglob("*.tmp")), "no temp file is left"
    assert sorted(p.name for p in (root / "train").glob("image-*.npy")) == ["image-00000.npy", "image-00001.npy"]
    assert not list((root / "train").glob("text-*.npy")), "the shard the disk could not hold is not there"
    index = json.loads((root / "index.json").read_text())
    assert index["complete"] is False and "train/text-00000.npy" not in index["files"]
    # the twin: with space again the next run resumes and the cache opens
    monkeypatch.undo()
    build_cache(params, "synthetic", tiny_backbones, progress=False)
    assert json.loads((root / "index.json").read_text())["complete"] is True
    open_cache(params, "synthetic", tiny_backbones)


def test_shards_are_written_without_a_memory_map_and_byte_for_byte_as_before(tmp_path, monkeypatch):
    import numpy as np

    from mitp.cache import storage

    def no_memmap(*args, **kwargs):
        raise AssertionError("a shard written through a memory map")

    monkeypatch.setattr(np.lib.format, "open_memmap", no_memmap)
    monkeypatch.setattr(np, "memmap", no_memmap)
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((10, 3, 4)).astype(np.float16)
    storage.write_shard(tmp_path / "new.npy", (10, 3, 4), "float16", [rows[:4], rows[4:8], rows[8:]])
    buf = io.BytesIO()
    np.save(buf, rows, allow_pickle=False)  # the bytes open_memmap wrote: header 1.0, C order
    assert (tmp_path / "new.npy").read_bytes() == buf.getvalue()
    assert (tmp_path / "new.npy").stat().st_size == storage.npy_bytes((10, 3, 4), "float16")


@pytest.mark.slow
def test_a_full_disk_ends_the_cache_stage_with_one_line(cache_params):
    params = cache_params()
    flat = {"data.root": params.data.root, "backbone.dir": params.backbone.dir, "cache.dir": params.cache.dir,
            "mlflow.tracking_uri": params.mlflow.tracking_uri, "cache.layer": params.cache.layer,
            "model.interaction.start": params.model.interaction.start, "cache.shard_size": params.cache.shard_size,
            "cache.batch_size": params.cache.batch_size, "sweep.space": "{model.prompt_length: {grid: [4, 8]}}"}
    for key in ("n_train", "n_val", "n_test", "hypotheses_per_image"):
        flat[f"data.synthetic.{key}"] = getattr(params.data.synthetic, key)
    argv = ["pipeline.cache", "--dataset", "synthetic", *(a for k, v in flat.items() for a in ("-S", f"{k}={v}"))]
    full = ("import errno, os, runpy, sys\n"
            "def full(fd, offset, length):\n"
            "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
            "os.posix_fallocate = full\n"
            f"sys.argv = {argv!r}\n"
            "runpy.run_module('pipeline.cache', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", full], capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "disk full while writing the feature cache" in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    root = params.features_dir("synthetic")
    assert not list(root.rglob("*.tmp")) and not list(root.rglob("image-*.npy"))
