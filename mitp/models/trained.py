"""A trained model as a self-describing folder: trainable weights + a model card, rebuilt anywhere.

Layout of a model folder (``models/<dataset>/<kind>/``, the MLflow model's artifact, or any copy)::

    model_card.json     everything needed to rebuild and run the model (below)
    weights.safetensors the trainable parameters only (prompts, hub, head) of the best epoch
    backbones/<name>/   the frozen pair, packed when small (tiny-random); absent for hub
                        backbones, which are fetched at the card's pinned revisions on first use

The card holds the model config (``MITPConfig`` or ``PMFConfig``), the label names in order, the task (single/multi-label and
the 0.5 threshold), the backbone spec (preset, ids, resolved revisions, or the tiny-random
recipe), the preprocessing (image size, normalisation, tokenizer, ``max_text_length``), the
cache layer and dtype the model was trained from, the dataset's manifest digest, the git commit
and the run that produced it. The folder is written atomically: a reader sees the old model or
the new one, never a mix.

A folder is input: :func:`read_card` checks the card against a strict schema
(:mod:`mitp.models.card`), :func:`load` confines every path to the folder, checks the packed
backbones and the weights (names and shapes from the header, finite values) and writes nothing.

Model URIs (:func:`fetched`, :func:`load_uri`): a local folder (a model folder, or a downloaded MLflow model
holding one under ``artifacts/model``), ``runs:/<run id>/model`` or ``models:/<name>/<version>``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mitp.atomic import atomic_dir
from mitp.config.params import BackboneConfig, Params
from mitp.errors import UserError
from mitp.models import backbones as backbones_mod
from mitp.models import card as card_schema
from mitp.models.card import CARD_FORMAT, PACKED
from mitp.models.kinds import from_config
from mitp.models.mitp import TwoTowers
from mitp.models.weights import load_weights, save_weights

CARD = "model_card.json"
WEIGHTS = "weights.safetensors"
THRESHOLD = 0.5  # multi-label decision threshold (the one the metrics use)
ARTIFACT_KEY = "model"  # the model folder's name among an MLflow pyfunc model's artifacts


class ModelFolderError(UserError):
    """A model folder or URI that cannot be read."""


@dataclass
class TrainedModel:
    """A rebuilt model ready for inference (eval mode, on ``device``)."""

    model: TwoTowers
    backbones: backbones_mod.Backbones
    card: dict[str, Any]
    folder: Path
    device: torch.device

    @property
    def labels(self) -> list[str]:
        return list(self.card["labels"])

    @property
    def multi_label(self) -> bool:
        return self.card["task"]["type"] == "multi_label"


# --------------------------------------------------------------------------------------------
# The card
# --------------------------------------------------------------------------------------------


def backbone_section(params: Params, bb: backbones_mod.Backbones) -> dict[str, Any]:
    spec = bb.spec
    cfg = params.backbone.model_dump(exclude={"dir"})
    section: dict[str, Any] = {"config": cfg, "name": spec.name, "packed": None}
    if spec.preset == "tiny-random":
        section["recipe"] = {"tiny_seed": spec.tiny_seed, "config": backbones_mod.TINY,
                             "format": backbones_mod.TINY_FORMAT}
        section["packed"] = f"{PACKED}/{spec.name}"
    else:
        # bb.spec holds the commits the hub resolved the asked revisions to (recorded at fetch)
        section["resolved_revisions"] = {part: getattr(spec, f"{part}_revision") for part in ("vision", "text")}
    return section


def preprocessing_section(bb: backbones_mod.Backbones, max_text_length: int) -> dict[str, Any]:
    ip, tok = bb.image_processor, bb.tokenizer
    return {
        "image_processor": type(ip).__name__,
        "image_size": dict(ip.size) if getattr(ip, "size", None) else None,
        "image_mean": list(ip.image_mean), "image_std": list(ip.image_std),
        "rescale_factor": getattr(ip, "rescale_factor", None),
        "tokenizer": type(tok).__name__, "do_lower_case": getattr(tok, "do_lower_case", None),
        "max_text_length": max_text_length,
    }


def make_card(params: Params, dataset: str, bb: backbones_mod.Backbones, config, labels: list[str],
              *, start_layer: int, source: str, cache_fingerprint: str | None, manifest_sha256: str,
              run_id: str | None, best_epoch: int, git_commit: str, metrics: dict[str, float],
              autocast: str | None = None) -> dict[str, Any]:
    """The card of a model trained by ``mitp.training.fit.fit``.

    ``start_layer``/``source``: the layer k the training batches entered and where they came from
    ("cache" or "raw"); inference runs the frozen layers below k and rounds their output to the
    cache dtype, as the cache build did, so it computes exactly what training saw.
    ``autocast``: the dtype training ran the trainable part under (``bfloat16`` on CUDA).
    """
    from_cache = source == "cache"
    return {
        "format": CARD_FORMAT,
        "model": dataclasses.asdict(config),
        "labels": list(labels),
        "task": {"type": "multi_label" if config.multi_label else "single_label",
                 "threshold": THRESHOLD if config.multi_label else None},
        "backbone": backbone_section(params, bb),
        "preprocessing": preprocessing_section(bb, params.dataset(dataset).max_text_length),
        "trained_from": {"source": source, "layer": start_layer,
                         "dtype": params.cache.dtype if from_cache else None,
                         "cache_fingerprint": cache_fingerprint},
        "dataset": {"name": dataset, "manifest_sha256": manifest_sha256},
        "training": {"run_id": run_id, "best_epoch": best_epoch, "git_commit": git_commit, "seed": params.seed,
                     "autocast": autocast,
                     "metrics": {k: v for k, v in metrics.items() if k.startswith(("test_", "val_"))}},
    }


# --------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------


def save(folder: str | Path, state: dict[str, torch.Tensor], card: dict[str, Any], params: Params) -> Path:
    """Write weights + card (+ the packed backbones) into ``folder``, replacing it atomically."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        save_weights(tmp / WEIGHTS, state, metadata={"format": str(CARD_FORMAT)})
        packed = card["backbone"]["packed"]
        if packed:
            src = backbones_mod.local_dir(params.backbone)
            for part in ("vision", "text"):
                shutil.copytree(src / part, tmp / packed / part, symlinks=False,
                                ignore=shutil.ignore_patterns(".cache"))
            # with its spec the pack is a complete copy: loading reads it, never rebuilds it into the folder
            shutil.copy2(src / backbones_mod.SPEC_FILE, tmp / packed / backbones_mod.SPEC_FILE)
        (tmp / CARD).write_text(json.dumps(card, indent=2, default=str) + "\n")
    return folder


def copy(src: str | Path, dest: str | Path) -> Path:
    """Copy a model folder (e.g. one fetched from MLflow) to ``dest``, replacing it atomically."""
    read_card(src)
    with atomic_dir(dest) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    return Path(dest)


def read_card(folder: str | Path) -> dict[str, Any]:
    """The folder's card, checked against the strict schema (:mod:`mitp.models.card`)."""
    path = Path(folder) / CARD
    if not path.is_file():
        raise ModelFolderError(f"{path}: not found; not a model folder (expected {CARD} and {WEIGHTS})")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        got = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise ModelFolderError(f"{path}: card format {got!r}, this code reads {CARD_FORMAT}")
    try:
        return card_schema.validate(card, str(path))
    except ValueError as exc:
        raise ModelFolderError(str(exc)) from None


def _inside(folder: Path, path: Path, what: str) -> Path:
    """``path`` resolved (links followed); refused unless it stays inside ``folder``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(folder.resolve()):
        raise ModelFolderError(f"{path}: {what} leads outside the model folder")
    return resolved


def check_packed(folder: Path, card: dict[str, Any]) -> Path:
    """The packed tiny-random pair: complete (its ``spec.json`` present, so loading never builds
    into the folder), every file inside the folder (no link out), configs of the recipe (so no
    config.json can make the loader allocate what it likes). Returns the packed folder."""
    packed = folder / card["backbone"]["packed"]
    _inside(folder, packed, "backbone.packed")
    spec = packed / backbones_mod.SPEC_FILE
    if not spec.is_file():
        raise ModelFolderError(f"{spec}: not found; the packed backbones are incomplete (they are never rebuilt "
                               f"into a model folder)")
    for path in packed.rglob("*"):
        _inside(folder, path, "a packed backbone file")
    vision_cfg, text_cfg = backbones_mod.tiny_configs()
    for part, want in (("vision", vision_cfg), ("text", text_cfg)):
        path = packed / part / "config.json"
        try:
            got = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelFolderError(f"{path}: unreadable ({type(exc).__name__})") from None
        keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "image_size", "patch_size", "num_channels", "vocab_size", "max_position_embeddings")
        wanted = want.to_dict()
        bad = [k for k in keys if k in wanted and (not isinstance(got, dict) or got.get(k) != wanted[k])]
        if bad or (isinstance(got, dict) and "auto_map" in got):
            raise ModelFolderError(f"{path}: {(bad or ['auto_map'])[0]} is not the tiny-random recipe's")
    return packed


def backbone_config(card: dict[str, Any], folder: Path, backbone_dir: str | Path | None = None) -> BackboneConfig:
    """The card's backbone settings (validated by :func:`read_card`); ``dir`` is the packed copy
    when there is one, else ``backbone_dir`` or the project's backbone folder (never the card's)."""
    section = card["backbone"]
    cfg = dict(section["config"])
    if section.get("packed"):
        cfg["dir"] = str(check_packed(folder, card).parent)
    elif backbone_dir is not None:
        cfg["dir"] = str(backbone_dir)
    if not section.get("packed"):  # a preset's hub pair, at its pinned revisions (checked by the schema)
        revs = section.get("resolved_revisions") or {}
        cfg.update({f"{part}_revision": revs.get(part) or cfg.get(f"{part}_revision") for part in ("vision", "text")})
    return BackboneConfig(**cfg)


def load_backbones(cfg: BackboneConfig, device: torch.device) -> backbones_mod.Backbones:
    """The one call into ``mitp.models.backbones.load``."""
    return backbones_mod.load(cfg, device)


def _read_weights(path: Path, model: TwoTowers) -> dict[str, torch.Tensor]:
    """The trainable weights, checked from the file's header (names and shapes of the card's
    model, before any tensor is read) and then for finite values."""
    from safetensors import safe_open

    expected = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
            unexpected = sorted(set(names) - set(expected))
            missing = sorted(set(expected) - set(names))
            if unexpected or missing:
                raise ModelFolderError(f"{path}: does not match the card's model: missing {missing[:3]}, "
                                       f"unexpected {unexpected[:3]}")
            for name in names:
                shape = tuple(f.get_slice(name).get_shape())
                if shape != expected[name]:
                    raise ModelFolderError(f"{path}: {name} has shape {list(shape)}, the card's model "
                                           f"{list(expected[name])}")
            state = {name: f.get_tensor(name) for name in names}
    except ModelFolderError:
        raise
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise ModelFolderError(f"{path}: not a readable safetensors file ({type(exc).__name__})") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelFolderError(f"{path}: {name} holds non-finite values (nan or inf); refusing to predict with it")
    return state


def load(folder: str | Path, device: str | torch.device = "cpu", backbone_dir: str | Path | None = None) -> TrainedModel:
    """Rebuild the model of a folder: backbones, the model of the card's kind, trainable weights.

    Read-only: nothing is written into the folder. Every problem is one ModelFolderError line
    naming the file (and the card key)."""
    folder = Path(folder)
    card = read_card(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ModelFolderError(f"{weights}: not found; the model folder is incomplete")
    _inside(folder, weights, WEIGHTS)
    device = torch.device(device)
    cfg = backbone_config(card, folder, backbone_dir)
    if card["backbone"].get("packed"):
        try:
            bb = load_backbones(cfg, device)
        except Exception as exc:  # a damaged packed file: name the folder, never rebuild it
            raise ModelFolderError(f"{folder / card['backbone']['packed']}: the packed backbones cannot be loaded "
                                   f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    else:
        bb = load_backbones(cfg, device)
    try:
        model = from_config(card["model"], bb.vision, bb.text)
    except (ValueError, UserError) as exc:
        raise ModelFolderError(f"{folder / CARD}: model: {exc}") from None
    state = _read_weights(weights, model)
    try:
        load_weights(model, state)
    except (ValueError, RuntimeError) as exc:  # names or shapes that are not the card's model
        raise ModelFolderError(f"{weights}: {str(exc).splitlines()[0][:300]}") from None
    model.to(device).eval()
    return TrainedModel(model, bb, card, folder, device)


# --------------------------------------------------------------------------------------------
# URIs
# --------------------------------------------------------------------------------------------


def model_folder_in(path: Path) -> Path | None:
    """The model folder at ``path``: itself, or the one inside a downloaded MLflow model."""
    if (path / CARD).is_file():
        return path
    # pyfunc artifacts keep the source folder's name (artifacts/mitp, artifacts/model, ...)
    found = sorted(c.parent for c in path.glob(f"artifacts/*/{CARD}"))
    return found[0] if len(found) == 1 else None


@contextlib.contextmanager
def fetched(uri: str, tracking_uri: str | None = None) -> Iterator[Path]:
    """The local model folder of ``uri``; MLflow URIs are downloaded to a temp folder that is
    removed on exit (load the model inside the ``with``)."""
    local = Path(uri)
    if "://" not in uri and ":/" not in uri:
        found = model_folder_in(local) if local.exists() else None
        if found is None:
            raise ModelFolderError(f"--model {uri}: no {CARD} there (nor in a downloaded MLflow model's artifacts/)")
        yield found
        return
    if not uri.startswith(("runs:/", "models:/")):
        raise ModelFolderError(f"--model {uri}: expected runs:/<id>/model, models:/<name>/<version> or a folder")
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    dest = Path(tempfile.mkdtemp(prefix="mitp-model-"))
    try:
        try:
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
        except Exception as exc:  # unknown run, model or version: say which
            raise ModelFolderError(f"--model {uri}: could not fetch it from MLflow ({tracking_uri or 'default store'}): "
                                   f"{type(exc).__name__}: {str(exc)[:300]}") from exc
        found = model_folder_in(got)
        if found is None:
            raise ModelFolderError(f"--model {uri}: the MLflow model holds no {CARD}; not a model this project logged")
        yield found
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def load_uri(uri: str, device: str | torch.device = "cpu", tracking_uri: str | None = None) -> TrainedModel:
    """:func:`load` for any model URI (see the module docstring)."""
    with fetched(uri, tracking_uri) as folder:
        return load(folder, device)
