"""Backbones are reproducible: pinned presets, a local copy per revision whose recorded spec is
checked on reuse, a fixed image-processor backend, and repos that ship only ``.bin`` weights.

The hub is a local folder per (repo, commit) served through the two ``huggingface_hub`` calls
the fetch makes, so the real fetch/record/load path runs without a network.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from mitp.config.params import BackboneConfig
from mitp.models import backbones

REV_A, REV_B, REV_T = "a" * 40, "b" * 40, "c" * 40


def _tiny_pair(root: Path, seed: int) -> Path:
    spec = backbones.BackboneSpec("tiny-random", "v", "t", None, None, tiny_seed=seed)
    return backbones.build_tiny_random(root / f"pair-s{seed}", spec)


def _bin_only(folder: Path) -> Path:
    """``folder`` rewritten as an older repo: ``pytorch_model.bin``, no safetensors."""
    st = folder / "model.safetensors"
    torch.save(load_file(st), folder / "pytorch_model.bin")
    st.unlink()
    return folder


class FakeHub:
    """``{(repo, commit): folder}``; ``None`` resolves to the last commit listed for the repo."""

    def __init__(self, repos: dict[tuple[str, str], Path]):
        self.repos = repos
        self.fetched: list[tuple[str, str, list[str]]] = []

    def _resolve(self, repo: str, revision: str | None) -> str:
        commits = [c for r, c in self.repos if r == repo]
        if revision is None:
            return commits[-1]
        if revision not in commits:
            raise FileNotFoundError(f"{repo}: no revision {revision}")
        return revision

    def install(self, monkeypatch) -> FakeHub:
        import huggingface_hub

        hub = self

        class Api:
            def model_info(self, repo, revision=None, files_metadata=False):
                sha = hub._resolve(repo, revision)
                files = [p.name for p in hub.repos[repo, sha].iterdir()]
                return SimpleNamespace(sha=sha, siblings=[SimpleNamespace(rfilename=f) for f in files])

        def snapshot_download(repo_id, revision, local_dir, allow_patterns):
            src = hub.repos[repo_id, hub._resolve(repo_id, revision)]
            Path(local_dir).mkdir(parents=True)
            copied = sorted(p.name for p in src.iterdir()
                            if any(fnmatch.fnmatch(p.name, pat) for pat in allow_patterns))
            for name in copied:
                shutil.copy(src / name, Path(local_dir) / name)
            hub.fetched.append((repo_id, revision, copied))
            return str(local_dir)

        monkeypatch.setattr(huggingface_hub, "HfApi", Api)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
        return self


@pytest.fixture
def hub(tmp_path, monkeypatch):
    a, b = _tiny_pair(tmp_path / "hub", 0), _tiny_pair(tmp_path / "hub", 1)
    return FakeHub({("org/vit", REV_A): a / "vision", ("org/vit", REV_B): b / "vision",
                    ("org/bert", REV_T): a / "text"}).install(monkeypatch)


def _cfg(tmp_path, **kw) -> BackboneConfig:
    base = dict(preset="custom", vision="org/vit", text="org/bert", vision_revision=REV_A,
                text_revision=REV_T, dir=str(tmp_path / "backbones"))
    return BackboneConfig(**{**base, **kw})


def _same_weights(model: torch.nn.Module, folder: Path) -> bool:
    stored = load_file(folder / "model.safetensors")
    return all(torch.equal(v, stored[k]) for k, v in model.state_dict().items() if k in stored)


def test_presets_are_pinned_to_commits():
    for (vision, vrev), (text, trev) in backbones.PRESETS.values():
        assert backbones._is_commit(vrev) and backbones._is_commit(trev), (vision, text)
    spec = backbones.spec_from_config(BackboneConfig(preset="vit-base+bert-base"))
    assert spec.vision_revision == backbones.PRESETS["vit-base+bert-base"][0][1]
    assert spec.vision_revision[:12] in spec.name
    # a different repo than the preset's does not inherit the preset's commit
    other = backbones.spec_from_config(BackboneConfig(preset="vit-base+bert-base", vision="org/other-vit"))
    assert other.vision_revision is None and other.text_revision is not None


def test_changed_vision_revision_fetches_again_never_reuses(tmp_path, hub):
    first = backbones.load(_cfg(tmp_path))
    assert _same_weights(first.vision, hub.repos["org/vit", REV_A])
    assert first.spec.vision_revision == REV_A

    second = backbones.load(_cfg(tmp_path, vision_revision=REV_B))
    assert [(r, rev) for r, rev, _ in hub.fetched] == [("org/vit", REV_A), ("org/bert", REV_T),
                                                     ("org/vit", REV_B), ("org/bert", REV_T)]
    assert _same_weights(second.vision, hub.repos["org/vit", REV_B])
    assert not _same_weights(second.vision, hub.repos["org/vit", REV_A])
    assert backbones.local_dir(_cfg(tmp_path)) != backbones.local_dir(_cfg(tmp_path, vision_revision=REV_B))

    # reuse: the same revision again is served from the local copy, no fetch
    backbones.load(_cfg(tmp_path))
    assert len(hub.fetched) == 4


def test_unpinned_revision_records_the_resolved_commit_and_warns(tmp_path, hub, caplog):
    with caplog.at_level("WARNING", logger="mitp.models.backbones"):
        bb = backbones.load(_cfg(tmp_path, vision_revision=None))
    assert "backbone.vision_revision is not pinned" in caplog.text
    assert bb.spec.vision_revision == REV_B  # the commit main pointed to at fetch time
    recorded = json.loads((backbones.local_dir(_cfg(tmp_path, vision_revision=None)) / "spec.json").read_text())
    assert recorded["requested"]["vision_revision"] is None
    assert recorded["resolved"]["vision_revision"] == REV_B


@pytest.mark.parametrize("key, value", [("vision_revision", "d" * 40), ("image_processor_backend", "torchvision")])
def test_a_copy_recorded_for_another_spec_stops_naming_the_key(tmp_path, hub, key, value):
    cfg = _cfg(tmp_path)
    backbones.load(cfg)
    spec_file = backbones.local_dir(cfg) / "spec.json"
    recorded = json.loads(spec_file.read_text())
    recorded["requested"][key] = value
    spec_file.write_text(json.dumps(recorded))
    with pytest.raises(backbones.BackboneError, match=f"^backbone.{key}: .*delete that folder"):
        backbones.load(cfg)
    assert len(hub.fetched) == 2  # stopped: neither re-fetched nor silently reused


def test_a_copy_without_its_record_is_made_again(tmp_path, hub):
    cfg = _cfg(tmp_path)
    backbones.load(cfg)
    (backbones.local_dir(cfg) / "spec.json").unlink()  # e.g. an interrupted or older copy
    backbones.load(cfg)
    assert len(hub.fetched) == 4


def test_bin_only_hub_repo_is_fetched_and_loads(tmp_path, hub):
    _bin_only(hub.repos["org/vit", REV_A])
    bb = backbones.load(_cfg(tmp_path))
    assert "pytorch_model.bin" in hub.fetched[0][2] and not any(f.endswith(".safetensors") for f in hub.fetched[0][2])
    # a repo with safetensors does not download its .bin twin as well
    assert "model.safetensors" in hub.fetched[1][2] and "pytorch_model.bin" not in hub.fetched[1][2]
    stored = torch.load(hub.repos["org/vit", REV_A] / "pytorch_model.bin")
    assert torch.equal(bb.vision.embeddings.patch_embeddings.projection.weight,
                       stored["embeddings.patch_embeddings.projection.weight"])


def test_bin_only_local_folder_loads(tmp_path):
    pair = _tiny_pair(tmp_path / "local", 3)
    vision = _bin_only(pair / "vision")
    cfg = BackboneConfig(preset="custom", vision=str(vision), text=str(pair / "text"), dir=str(tmp_path / "bb"))
    bb = backbones.load(cfg)
    assert bb.spec.vision_revision is None and "local" in backbones.local_dir(cfg).name
    assert not any(p.requires_grad for p in bb.vision.parameters())


def test_image_processor_backend_is_pinned_and_in_the_cache_fingerprint(tmp_path, hub, monkeypatch):
    from transformers.models.auto import image_processing_auto

    # even where torchvision is installed (the default would then be its backend), PIL is used
    monkeypatch.setattr(image_processing_auto, "is_torchvision_available", lambda: True)
    bb = backbones.load(_cfg(tmp_path))
    assert type(bb.image_processor).__name__ == "ViTImageProcessorPil"
    assert bb.spec.fingerprint()["image_processor_backend"] == backbones.IMAGE_PROCESSOR_BACKEND == "pil"

    import importlib

    fp_module = importlib.import_module("mitp.cache.fingerprint")
    params = SimpleNamespace(backbone=_cfg(tmp_path), cache=SimpleNamespace(layer=0, dtype="float16"),
                             dataset=lambda _: SimpleNamespace(max_text_length=8),
                             prepared_dir=lambda _: tmp_path / "prepared")
    (tmp_path / "prepared").mkdir()
    monkeypatch.setattr(fp_module, "manifest_hash", lambda _: "h")
    monkeypatch.setattr(fp_module, "plan_all", lambda *_: {})  # no manifests here: the images are not the point
    monkeypatch.setattr(fp_module, "images_hash", lambda _: "i")
    fp = fp_module.fingerprint(params, "synthetic", bb)
    assert fp["backbone_resolved"]["image_processor_backend"] == "pil"
    assert fp["backbone_resolved"]["vision_revision"] == REV_A
