"""A model folder is input (issue 21): its card is checked as a strict schema before anything is
built, its paths stay inside it, its weights must be finite, and loading never writes into it.
Every hostile folder gives one ModelFolderError line naming the file (and the card key); each
test is written as the attack, the untouched folder is the twin."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mitp.data.manifests import read_split
from mitp.models import backbones as backbones_mod
from mitp.models import inference
from mitp.models import trained as trained_model

TRUSTED = inference.ImagePolicy(any_path=True)


def _copy(trained_run, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(trained_run.folder, folder)
    return folder


def _edit_card(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        card = json.loads((folder / trained_model.CARD).read_text())
        edit(card)
        (folder / trained_model.CARD).write_text(json.dumps(card))
    return apply


def _set(path: str, value) -> Callable[[Path], None]:
    def edit(card: dict) -> None:
        *parents, last = path.split(".")
        node = card
        for p in parents:
            node = node[p]
        node[last] = value
    return _edit_card(edit)


def _drop(path: str) -> Callable[[Path], None]:
    def edit(card: dict) -> None:
        *parents, last = path.split(".")
        node = card
        for p in parents:
            node = node[p]
        del node[last]
    return _edit_card(edit)


def _weights(change: Callable[[dict], dict]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / trained_model.WEIGHTS
        save_file(change(load_file(str(path))), str(path))
    return apply


def _write(rel: str, data: bytes) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        (folder / rel).write_bytes(data)
    return apply


def _packed(folder: Path) -> Path:
    return folder / json.loads((folder / trained_model.CARD).read_text())["backbone"]["packed"]


def _vit_preset(card: dict) -> None:
    card["backbone"] = {"config": {"preset": "vit-base+bert-base", "vision": "evil/vit", "text": None,
                                   "vision_revision": None, "text_revision": None, "tiny_seed": 0},
                        "name": "x", "packed": None,
                        "resolved_revisions": {"vision": "main", "text": None}}


def _unpinned_preset(card: dict) -> None:
    _vit_preset(card)
    card["backbone"]["config"]["vision"] = None


def _link_out(folder: Path) -> None:
    packed = _packed(folder)
    target = folder.parent / "elsewhere"
    shutil.copytree(packed / "vision", target)
    shutil.rmtree(packed / "vision")
    (packed / "vision").symlink_to(target, target_is_directory=True)


def _packed_config(key: str, value) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = _packed(folder) / "vision" / "config.json"
        cfg = json.loads(path.read_text())
        cfg[key] = value
        path.write_text(json.dumps(cfg))
    return apply


def _nan(state: dict) -> dict:
    return {k: torch.full_like(v, float("nan")) for k, v in state.items()}


def _reshape(state: dict) -> dict:
    name = sorted(state)[0]
    return {**state, name: torch.zeros(3, 3)}


# (attack, what the one error line must name)
HOSTILE: dict[str, tuple[Callable[[Path], None], str]] = {
    "card not JSON": (_write(trained_model.CARD, b"{not json"), "model_card.json: not valid JSON"),
    "card not UTF-8": (_write(trained_model.CARD, b"\xff\xfe{}"), "model_card.json: not valid JSON"),
    "card a list": (_write(trained_model.CARD, b"[1, 2]"), "model_card.json: card format 'list'"),
    "card format 2": (_set("format", 2), "model_card.json: card format 2"),
    "card without backbone": (_drop("backbone"), "model_card.json: backbone: Field required"),
    "unknown top-level key": (_set("extra", 1), "model_card.json: extra: unknown key"),
    "backbone dir in the card": (_set("backbone.config.dir", "/tmp/elsewhere"), "backbone.config.dir: unknown key"),
    "packed leaves the folder": (_set("backbone.packed", "../../outside"), "backbone: packed: "),
    "packed absolute": (_set("backbone.packed", "/etc"), "backbone: packed: "),
    "custom preset, local folder": (_set("backbone.config.preset", "custom"), "backbone.config.preset"),
    "arbitrary hub id": (_edit_card(_vit_preset), "backbone: config: a model card may name only"),
    "unpinned hub revision": (_edit_card(_unpinned_preset), "vision_revision: only the preset's pinned commit"),
    "tiny seed edited": (_set("backbone.config.tiny_seed", 7), "backbone: packed: tiny-random backbones travel"),
    "hub_size 10**7": (_set("model.hub_size", 10**7), "model.hub_size: Input should be less than or equal to"),
    "prompt_length 0": (_set("model.prompt_length", 0), "model.prompt_length"),
    "unknown model kind": (_set("model.kind", "os.system"), "model: Input tag 'os.system'"),
    "num_labels vs labels": (_set("model.num_labels", 7), "model.num_labels: 7, but the card lists"),
    "labels empty": (_set("labels", []), "labels: List should have at least 1 item"),
    "labels repeated": (_edit_card(lambda c: c.update(labels=[c["labels"][0]] * len(c["labels"]))), "labels: must be"),
    "layer -3": (_set("trained_from.layer", -3), "trained_from.layer: Input should be greater than or equal to 0"),
    "layer beyond the depth": (_set("trained_from.layer", 9), "trained_from.layer: 9 is beyond the backbone depth"),
    "dtype a torch function": (_set("trained_from.dtype", "manual_seed"), "trained_from.dtype"),
    "autocast a torch function": (_set("training.autocast", "manual_seed"), "training.autocast"),
    "max_text_length 10**9": (_set("preprocessing.max_text_length", 10**9), "preprocessing.max_text_length"),
    "multi_label disagrees": (_set("task.type", "multi_label"), "task: type, threshold and model.multi_label"),
    "dropout NaN": (_write(trained_model.CARD, b""), "model.dropout"),  # filled in below
    "weights missing": (lambda f: (f / trained_model.WEIGHTS).unlink(), "weights.safetensors: not found"),
    "weights not safetensors": (_write(trained_model.WEIGHTS, b"garbage" * 10),
                                "weights.safetensors: not a readable safetensors file"),
    "weights all NaN": (_weights(_nan), "holds non-finite values"),
    "weights of another shape": (_weights(_reshape), "has shape [3, 3], the card's model"),
    "weights of another model": (_weights(lambda st: {"evil": torch.zeros(2)}), "does not match the card's model"),
    "packed spec deleted": (lambda f: (_packed(f) / backbones_mod.SPEC_FILE).unlink(), "spec.json: not found"),
    "packed link out": (_link_out, "leads outside the model folder"),
    "packed config oversized": (_packed_config("hidden_size", 10**6), "config.json: hidden_size is not the tiny"),
    "packed config remote code": (_packed_config("auto_map", {"AutoModel": "evil.Model"}), "config.json: auto_map"),
    "packed weights garbage": (lambda f: (_packed(f) / "vision" / "model.safetensors").write_bytes(b"x" * 64),
                               "the packed backbones cannot be loaded"),
}


def _nan_dropout(folder: Path) -> None:
    path = folder / trained_model.CARD
    card = json.loads(path.read_text())
    card["model"]["dropout"] = float("nan")
    path.write_text(json.dumps(card))  # json writes NaN, and Python's json reads it back


HOSTILE["dropout NaN"] = (_nan_dropout, "model.dropout")


@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_hostile_folder_is_one_clear_error(trained_run, tmp_path, attack):
    folder = _copy(trained_run, tmp_path)
    change, named = HOSTILE[attack]
    change(folder)
    with pytest.raises(trained_model.ModelFolderError) as info:
        trained_model.load(folder)
    message = str(info.value)
    assert "\n" not in message and named in message, message
    assert str(folder) in message  # names the file


def test_untouched_folder_loads_and_predicts(trained_run, tmp_path):
    """The twin: the same copy, unedited, loads and answers."""
    folder = _copy(trained_run, tmp_path)
    tm = trained_model.load(folder)
    m = read_split(trained_run.params.prepared_dir("synthetic"), "test")
    preds, _ = inference.predict_rows(tm, [(str(m.image_path(0)), m.frame["text"].iat[0])], progress=False,
                                      policy=TRUSTED)
    assert preds[0].label in tm.labels


def test_hub_preset_card_uses_the_project_folder_not_the_cards(trained_run, tmp_path):
    """A preset card never names where backbones go: the project's folder (or the caller's)."""
    card = json.loads((trained_run.folder / trained_model.CARD).read_text())
    (vision, vpin), (text, tpin) = backbones_mod.PRESETS["vit-base+bert-base"]
    card["backbone"] = {"config": {"preset": "vit-base+bert-base", "vision": None, "text": None,
                                   "vision_revision": None, "text_revision": None, "tiny_seed": 0},
                        "name": "n", "packed": None, "resolved_revisions": {"vision": vpin, "text": tpin}}
    card["model"]["start"] = 1
    from mitp.models import card as card_schema

    card_schema.validate(card, "card")
    cfg = trained_model.backbone_config(card, tmp_path)
    assert cfg.dir == "data/backbones" and cfg.vision_revision == vpin and cfg.text_revision == tpin
    assert trained_model.backbone_config(card, tmp_path, tmp_path / "bb").dir == str(tmp_path / "bb")


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def test_read_only_folder_loads_and_predicts_unchanged(trained_run, tmp_path):
    """``chmod -R a-w``: the folder loads and predicts and not a byte (nor a file) changes. The
    tests run as root here, which could still write: the snapshot is the check."""
    folder = _copy(trained_run, tmp_path)
    before = _snapshot(folder)
    for p in [folder, *folder.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        tm = trained_model.load(folder)
        m = read_split(trained_run.params.prepared_dir("synthetic"), "test")
        preds, _ = inference.predict_rows(tm, [(str(m.image_path(i)), m.frame["text"].iat[i]) for i in range(4)],
                                          progress=False, policy=TRUSTED)
        assert all(p.label for p in preds)
        assert _snapshot(folder) == before
    finally:
        for p in [folder, *folder.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_tampered_packed_weights_are_used_never_regenerated(trained_run, tmp_path):
    """Packed backbone weights replaced by other valid weights: loaded as they are (the folder is
    what it is), never rebuilt from the recipe over them."""
    folder = _copy(trained_run, tmp_path)
    path = _packed(folder) / "vision" / "model.safetensors"
    state = load_file(str(path))
    name = sorted(state)[0]
    state[name] = state[name] + 1.0
    save_file(state, str(path))
    before = _snapshot(folder)
    tm = trained_model.load(folder)
    got = dict(tm.model.named_parameters()) | dict(tm.backbones.vision.named_parameters())
    assert any(torch.equal(p.detach().cpu(), state[name]) for n, p in got.items() if n.endswith(name))
    assert _snapshot(folder) == before


def test_non_finite_output_is_an_error_row_never_a_label():
    """Behind the weights check: a nan probability (from any cause) gives no label."""
    tm = trained_model.TrainedModel(model=None, backbones=None, card={"labels": ["a", "b"], "task": {"type": "x"}},
                                    folder=Path("."), device=torch.device("cpu"))
    pred = inference.decide(tm, [float("nan"), float("nan")])
    assert pred.label is None and pred.labels is None and "non-finite" in pred.error


def test_late_fusion_card_may_name_any_start(trained_run):
    """Twin of the depth checks: ``start`` bounds only the kinds that use it."""
    from mitp.models import card as card_schema

    card = json.loads((trained_run.folder / trained_model.CARD).read_text())
    card["model"].update(kind="late_fusion", start=9)
    card_schema.validate(card, "card")
    card["model"]["kind"] = "mitp"
    with pytest.raises(ValueError, match="model.start: 9 must be below the backbone depth 4"):
        card_schema.validate(card, "card")


@pytest.mark.parametrize("attack", ["hub_size 10**7", "packed leaves the folder", "weights all NaN"])
def test_hostile_folder_through_predict_is_exit_2_and_one_line(trained_run, tmp_path, attack):
    """What a user sees: ``pipeline.predict --model <hostile folder>`` stops with one line naming
    the file, exit status 2, no traceback, nothing written."""
    import subprocess
    import sys

    from mitp.config.params import REPO_ROOT

    folder = _copy(trained_run, tmp_path)
    HOSTILE[attack][0](folder)
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"image": "x.png", "text": "a text"}) + "\n")
    p = trained_run.params
    out = subprocess.run([sys.executable, "-m", "pipeline.predict", "--model", str(folder), "--input", str(src),
                          "--output", str(tmp_path / "out.jsonl"), "-S", f"data.root={p.data.root}",
                          "-S", f"mlflow.tracking_uri={p.mlflow.tracking_uri}", "-S", f"backbone.dir={p.backbone.dir}"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert str(folder) in errors[0] and not (tmp_path / "out.jsonl").exists()
