"""Inference from raw images and texts, shared by ``pipeline.evaluate``, ``pipeline.predict``
and the MLflow pyfunc model.

Rows are preprocessed one by one (so a bad row becomes a per-row error, never a failed batch)
with the backbone's own image processor and tokenizer (``mitp.data.dataset``), then batched.
The frozen layers below the layer ``k`` the model was trained from run in float32 and their
output is rounded to the cache dtype, exactly as the feature cache stored it; from there the
model runs as in training. So a model evaluated from raw inputs reproduces the metrics it
reached on the cache.

A row is ``(image, text)``: image a path or the image's bytes. With ``base`` (the folder of a
``pipeline.predict`` input file) paths are relative to it and must stay inside it; without it
(manifests, the pyfunc model's DataFrame) they are used as given.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mitp.data.dataset import TextImageCollator, pixel_values
from mitp.models.trained import TrainedModel

INPUT_COLUMNS = ("image", "text")


@dataclass
class Prediction:
    """One row's outcome: label(s) and per-class probabilities, or the error that stopped it."""

    probabilities: list[float] | None = None  # (K,), in the card's label order
    label: str | None = None  # single-label: the argmax class
    labels: list[str] | None = None  # multi-label: classes at or above the threshold
    error: str | None = None


def _open_source(image: Any, base: Path | None):
    """A path (relative to ``base``) or raw bytes -> something ``PIL.Image.open`` reads."""
    if isinstance(image, bytes | bytearray | memoryview):
        if not len(image):
            raise ValueError("image: empty bytes")
        return io.BytesIO(bytes(image))
    if not isinstance(image, str | Path) or not str(image).strip():
        raise ValueError("image: missing (expected a file path or image bytes)")
    path = Path(image)
    if base is not None:  # rows of an input file: never read outside its folder
        path = (base / path).resolve()
        if not path.is_relative_to(base.resolve()):
            raise ValueError(f"image: {image} is outside the input file's folder")
    if not path.is_file():
        raise ValueError(f"image: {image} not found")
    return path


def preprocess(tm: TrainedModel, image: Any, text: Any, base: Path | None) -> dict:
    """One row -> ``{"pixel_values", "text"}``; ValueError with a message naming the problem."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text: empty")
    source = _open_source(image, base)
    try:
        pixels = pixel_values(source, tm.backbones.image_processor)
    except Exception as exc:  # PIL raises many types for bad files
        raise ValueError(f"image: {image if not isinstance(source, io.BytesIO) else '<bytes>'} is not a readable "
                         f"image ({type(exc).__name__})") from None
    return {"pixel_values": pixels, "text": text}


@torch.inference_mode()
def batch_logits(tm: TrainedModel, batch: dict) -> torch.Tensor:
    """A collated batch -> logits (B, K), through the path the model was trained on."""
    model, k = tm.model, tm.card["trained_from"]["layer"]
    dtype = tm.card["trained_from"]["dtype"]
    dev = tm.device
    pixels, ids, mask = batch["pixel_values"].to(dev), batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
    if dtype is None:  # trained from raw inputs
        with _training_autocast(tm):
            return model(attention_mask=mask, pixel_values=pixels, input_ids=ids).logits.float()
    hidden_v, hidden_t = model.encode_prefix(pixels, ids, mask, k)  # float32, as the cache build
    cast = getattr(torch, dtype)
    with _training_autocast(tm):
        return model(attention_mask=mask, hidden_v=hidden_v.to(cast), hidden_t=hidden_t.to(cast),
                     start_layer=k).logits.float()


def _training_autocast(tm: TrainedModel):
    """The autocast training ran under (bfloat16 on CUDA), when inference is on CUDA too; a model
    trained on a GPU and run on a CPU runs in float32 (its logits may differ in the last bits)."""
    dtype = tm.card["training"].get("autocast")
    if dtype and tm.device.type == "cuda":
        return torch.autocast("cuda", dtype=getattr(torch, dtype))
    return contextlib.nullcontext()


def probabilities(tm: TrainedModel, logits: torch.Tensor) -> torch.Tensor:
    """(N, K) logits -> (N, K) probabilities: sigmoid per class (multi-label) or softmax."""
    return torch.sigmoid(logits) if tm.multi_label else logits.softmax(dim=-1)


def decide(tm: TrainedModel, probs: Sequence[float]) -> Prediction:
    names = tm.labels
    if tm.multi_label:
        threshold = tm.card["task"]["threshold"]
        return Prediction(list(probs), labels=[n for n, p in zip(names, probs, strict=True) if p >= threshold])
    best = max(range(len(names)), key=lambda i: probs[i])
    return Prediction(list(probs), label=names[best])


def predict_rows(tm: TrainedModel, rows: Iterable[tuple[Any, Any]], base: Path | None = None, batch_size: int = 64,
                 total: int | None = None, progress: bool = True) -> tuple[list[Prediction], torch.Tensor]:
    """``(image, text)`` rows -> one Prediction per row, plus the logits (N_ok, K) of the rows that
    ran (in row order). A row that cannot be preprocessed gets its error and no probabilities."""
    collate = TextImageCollator(tm.backbones.tokenizer, tm.card["preprocessing"]["max_text_length"])
    out: list[Prediction] = []
    all_logits: list[torch.Tensor] = []
    pending: list[tuple[int, dict]] = []

    def flush() -> None:
        if not pending:
            return
        logits = batch_logits(tm, collate([item for _, item in pending])).cpu()
        all_logits.append(logits)
        for (i, _), p in zip(pending, probabilities(tm, logits).tolist(), strict=True):
            out[i] = decide(tm, p)
        pending.clear()

    with tqdm(total=total, desc="predict", unit="row", mininterval=1.0, disable=not progress) as bar:
        for i, (image, text) in enumerate(rows):
            out.append(Prediction())
            try:
                pending.append((i, preprocess(tm, image, text, base)))
            except ValueError as exc:
                out[i] = Prediction(error=str(exc))
            if len(pending) >= batch_size:
                flush()
            bar.update(1)
        flush()
    logits = torch.cat(all_logits) if all_logits else torch.empty(0, len(tm.labels))
    return out, logits


def evaluate_split(tm: TrainedModel, prepared_dir: Path, split: str, batch_size: int = 64,
                   progress: bool = True) -> tuple[dict[str, float], list[Prediction], Any]:
    """Metrics of the model on a prepared split, from its raw images and texts.

    Returns ``(metrics, predictions, manifest)``; metrics are prefixed with the split name
    (``test_accuracy``, ``test_f1_micro``, ...) as the training run logs them."""
    from mitp.data.dataset import encode_labels
    from mitp.data.manifests import read_split
    from mitp.errors import UserError
    from mitp.models import metrics

    manifest = read_split(prepared_dir, split)
    if manifest.labels != tm.labels:
        raise UserError(f"{prepared_dir / 'labels.json'}: labels {manifest.labels[:5]}... differ from the model's "
                        f"{tm.labels[:5]}...; the model was trained on another label set")
    rows = ((str(manifest.image_path(i)), manifest.frame["text"].iat[i]) for i in range(len(manifest)))
    preds, logits = predict_rows(tm, rows, batch_size=batch_size, total=len(manifest), progress=progress)
    bad = [(i, p.error) for i, p in enumerate(preds) if p.error]
    if bad:
        i, err = bad[0]
        raise UserError(f"{prepared_dir / (split + '.parquet')}: {len(bad)} rows could not be read, first row {i}: {err}")
    gold = encode_labels(manifest.frame["label"].tolist(), manifest.labels, manifest.multi_label)
    result = metrics.compute(logits, gold, tm.multi_label)
    return {f"{split}_{k}": v for k, v in result.items()}, preds, manifest
