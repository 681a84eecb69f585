"""Torch datasets over the manifests: raw images and texts, through the backbones' preprocessors.

A batch is a dict the model takes as keyword arguments:
``pixel_values`` (B, 3, H, W) float, ``input_ids`` (B, N_t) long, ``attention_mask`` (B, N_t) long,
``labels`` (B,) long for single-label sets or (B, K) float multi-hot for multi-label sets.
The feature cache yields the same dict with ``hidden_v``/``hidden_t`` in place of the raw inputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from mitp.data.manifests import Manifest


def encode_labels(values: Sequence, labels: list[str], multi_label: bool) -> torch.Tensor:
    """Class names -> (N,) indices, or lists of names -> (N, K) multi-hot."""
    index = {name: i for i, name in enumerate(labels)}
    if not multi_label:
        return torch.tensor([index[v] for v in values], dtype=torch.long)
    out = torch.zeros(len(values), len(labels))
    for row, names in enumerate(values):
        for name in names:
            out[row, index[name]] = 1.0
    return out


class TooManyPixels(ValueError):
    """An image whose header declares more pixels than the caller reads."""


def pixel_values(image, image_processor, max_pixels: int | None = None) -> torch.Tensor:
    """An image (a path or a binary file object) -> (3, H, W) pixel values, as the model sees them
    on the raw path and in the feature cache alike.

    ``max_pixels`` bounds what is decoded, judged from the header (``Image.open`` reads only the
    header): a larger JPEG is decoded reduced (``draft``: 1/2, 1/4 or 1/8 scale, the smallest
    reduction that fits; its pixels then differ slightly from a full decode), any other larger
    image is refused with :class:`TooManyPixels` before a pixel is decoded."""
    with Image.open(image) as img:
        if max_pixels is not None and img.width * img.height > max_pixels:
            size = f"{img.width}x{img.height} pixels"
            if img.format == "JPEG":
                for scale in (2, 4, 8):
                    if (img.width // scale) * (img.height // scale) <= max_pixels:
                        img.draft("RGB", (img.width // scale, img.height // scale))
                        break
            if img.width * img.height > max_pixels:
                raise TooManyPixels(size)
        return image_processor(images=img.convert("RGB"), return_tensors="pt")["pixel_values"][0]


def cuda_workers(device: torch.device, most: int) -> int:
    """Loader workers by default: none on CPU (the model needs the cores; reads are cheap), up to
    ``most`` (one core left) keeping a GPU fed."""
    return max(1, min(most, (os.cpu_count() or 2) - 1)) if device.type == "cuda" else 0


class RawDataset(Dataset):
    """Manifest rows -> (pixel_values, text, label); tokenization happens per batch in ``collate``."""

    def __init__(self, manifest: Manifest, image_processor):
        self.manifest = manifest
        self.image_processor = image_processor
        self.labels = encode_labels(manifest.frame["label"].tolist(), manifest.labels, manifest.multi_label)
        self.texts = manifest.frame["text"].tolist()

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": pixel_values(self.manifest.image_path(i), self.image_processor),
                "text": self.texts[i], "labels": self.labels[i]}



class TextImageCollator:
    """Stacks pixels and labels; tokenizes the batch's texts (padded to the longest, truncated).
    Items without ``labels`` (inference on unlabelled inputs) give a batch without them."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: list[dict]) -> dict:
        tok = self.tokenizer([it["text"] for it in items], padding="longest", truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        batch = {
            "pixel_values": torch.stack([it["pixel_values"] for it in items]),
            "input_ids": tok["input_ids"],
            "attention_mask": tok["attention_mask"],
        }
        if "labels" in items[0]:
            batch["labels"] = torch.stack([it["labels"] for it in items])
        return batch
