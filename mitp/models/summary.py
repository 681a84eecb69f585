"""Model size without weights: the backbones are built from configs on the meta device."""

from __future__ import annotations

import torch

from mitp.config.params import Params
from mitp.data.manifests import read_labels
from mitp.models import backbones
from mitp.models.kinds import build_model

# Label counts of the benchmark datasets, for summaries before `prepare` has run.
KNOWN_NUM_LABELS = {"food101": 101, "mmimdb": 23, "snli_ve": 3, "synthetic": 3}


def num_labels(params: Params, dataset: str) -> int:
    labels_file = params.prepared_dir(dataset) / "labels.json"
    return len(read_labels(labels_file.parent)) if labels_file.exists() else KNOWN_NUM_LABELS[dataset]


def model_summary(params: Params, dataset: str) -> dict:
    """Trainable/total parameter counts, by part, of the configured model on ``dataset``."""
    vision, text = backbones.config_only(params.backbone)
    multi = params.dataset(dataset).task == "multi_label"
    with torch.device("meta"):
        model = build_model(params, vision, text, num_labels(params, dataset), multi)
    trainable = sum(p.numel() for p in model.trainable_parameters())
    total = sum(p.numel() for p in model.parameters())
    return {
        "dataset": dataset,
        "model_kind": params.model.kind,
        "backbone": backbones.spec_from_config(params.backbone).name,
        "interaction_layers": model.layers_i,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_ratio": trainable / total,
        "trainable_by_part": model.parameter_groups(),
        "backbone_params": total - trainable,
    }
