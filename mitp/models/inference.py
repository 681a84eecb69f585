"""Inference from raw images and texts, shared by ``pipeline.evaluate``, ``pipeline.predict``
and the MLflow pyfunc model.

Rows are preprocessed one by one (so a bad row becomes a per-row error, never a failed batch)
with the backbone's own image processor and tokenizer (``mitp.data.dataset``), then batched.
The frozen layers below the layer ``k`` the model was trained from run in float32 and their
output is rounded to the cache dtype, exactly as the feature cache stored it; from there the
model runs as in training. So a model evaluated from raw inputs reproduces the metrics it
reached on the cache.

A row is ``(image, text)``: image the image's bytes or a path, read as :class:`ImagePolicy`
says: relative to and confined to a root (``pipeline.predict``: the input file's folder; the
pyfunc model: the ``image_root`` its owner configured, else no paths at all), or as given
(manifests written by prepare). Requests are bounded: a text is cut to
``max_text_length * CHARS_PER_TOKEN`` characters before it is tokenized, and an image whose
header declares more than ``MAX_PIXELS`` pixels is refused before it is decoded (a JPEG is
decoded at a reduced scale instead); either costs under 200 MB.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mitp.data.dataset import TextImageCollator, TooManyPixels, pixel_values
from mitp.models.trained import TrainedModel

INPUT_COLUMNS = ("image", "text")
# A wordpiece token covers at least one character: max_text_length tokens never need more than
# this many characters each (long words, spaces between tokens); the rest is never tokenized.
CHARS_PER_TOKEN = 32
MAX_PIXELS = 2**23  # 8.4 MP (4096x2048): more is refused from the header (a JPEG is decoded reduced)
SHOWN = 80  # characters of a rejected image name echoed in its error


@dataclass(frozen=True)
class ImagePolicy:
    """Where a row's image may come from.

    ``root``: a path is relative to it and must resolve (symlinks followed) inside it.
    ``any_path``: a path is used as given (trusted rows: manifests written by prepare).
    Neither: paths are refused; only image bytes are read.
    ``decode_base64``: a string holding no ``.`` that decodes as strict base64 is the image's bytes
    (JSON carries bytes so; a path is told apart by its file extension).
    ``private``: a refused path gets the same error whether or not something exists there.
    """

    root: Path | None = None
    any_path: bool = False
    decode_base64: bool = False
    private: bool = False


@dataclass
class Prediction:
    """One row's outcome: label(s) and per-class probabilities, or the error that stopped it."""

    probabilities: list[float] | None = None  # (K,), in the card's label order
    label: str | None = None  # single-label: the argmax class
    labels: list[str] | None = None  # multi-label: classes at or above the threshold
    error: str | None = None


def _shown(image: Any) -> str:
    text = str(image)
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def _base64_bytes(image: str) -> bytes | None:
    """The bytes a base64 string (or ``data:...;base64,`` URI) holds; None when it is not one."""
    text = image.strip()
    if text.startswith("data:") and ";base64," in text[:100]:
        text = text.split(";base64,", 1)[1]
    elif "." in text:  # never in base64: a file name
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _open_source(image: Any, policy: ImagePolicy):
    """Image bytes or a path allowed by ``policy`` -> something ``PIL.Image.open`` reads."""
    if isinstance(image, bytes | bytearray | memoryview):
        if not len(image):
            raise ValueError("image: empty bytes")
        return io.BytesIO(bytes(image))
    if not isinstance(image, str | Path) or not str(image).strip():
        raise ValueError("image: missing (expected image bytes or a file path)")
    if policy.decode_base64 and isinstance(image, str):
        data = _base64_bytes(image)
        if data:
            return io.BytesIO(data)
    if policy.root is None and not policy.any_path:
        raise ValueError("image: file paths are not accepted here; send the image's bytes (base64 in JSON)")
    hidden = f"image: {_shown(image)} is not a readable file under the image root"
    path = Path(image)
    try:
        if policy.root is not None:  # never read outside the root
            root = policy.root.resolve()
            path = (root / path).resolve()
            if not path.is_relative_to(root):
                raise ValueError(hidden if policy.private else f"image: {_shown(image)} is outside the input file's folder")
        found = path.is_file()
    except OSError:  # a name too long for the file system, a loop of links, ...
        found = False
    if not found:
        raise ValueError(hidden if policy.private else f"image: {_shown(image)} not found")
    return path


def preprocess(tm: TrainedModel, image: Any, text: Any, policy: ImagePolicy,
               pixels: torch.Tensor | None = None) -> dict:
    """One row -> ``{"pixel_values", "text"}``; ValueError with a message naming the problem.
    ``pixels``: the image's pixel values, already computed (the image is not read again)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text: empty")
    text = text[:tm.card["preprocessing"]["max_text_length"] * CHARS_PER_TOKEN]  # never tokenize the rest
    if pixels is not None:
        return {"pixel_values": pixels, "text": text}
    source = _open_source(image, policy)
    shown = "<bytes>" if isinstance(source, io.BytesIO) else _shown(image)
    try:
        pixels = pixel_values(source, tm.backbones.image_processor, max_pixels=MAX_PIXELS)
    except TooManyPixels as exc:
        raise ValueError(f"image: {shown} is {exc}; at most {MAX_PIXELS} pixels are read") from None
    except Exception as exc:  # PIL raises many types for bad files
        if policy.private and not isinstance(source, io.BytesIO):
            raise ValueError(f"image: {shown} is not a readable file under the image root") from None
        raise ValueError(f"image: {shown} is not a readable image ({type(exc).__name__})") from None
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
    if not all(math.isfinite(p) for p in probs):  # never a label from nan: the row is an error
        return Prediction(error="model: non-finite output for this row")
    if tm.multi_label:
        threshold = tm.card["task"]["threshold"]
        return Prediction(list(probs), labels=[n for n, p in zip(names, probs, strict=True) if p >= threshold])
    best = max(range(len(names)), key=lambda i: probs[i])
    return Prediction(list(probs), label=names[best])


def predict_rows(tm: TrainedModel, rows: Iterable[tuple[Any, Any]], base: Path | None = None, batch_size: int = 64,
                 total: int | None = None, progress: bool = True,
                 policy: ImagePolicy | None = None, reuse_repeated: bool = False) -> tuple[list[Prediction], torch.Tensor]:
    """``(image, text)`` rows -> one Prediction per row, plus the logits (N_ok, K) of the rows that
    ran (in row order). A row that cannot be preprocessed gets its error and no probabilities.

    Images: ``policy``, else paths relative to and inside ``base``, else bytes only.
    ``reuse_repeated``: a row whose image is the same path as the previous row's reuses its pixels
    (SNLI-VE lists ~18 hypotheses per image one after another: each image is decoded once)."""
    if policy is None:
        policy = ImagePolicy(root=base)
    collate = TextImageCollator(tm.backbones.tokenizer, tm.card["preprocessing"]["max_text_length"])
    out: list[Prediction] = []
    all_logits: list[torch.Tensor] = []
    pending: list[tuple[int, dict]] = []
    last: tuple[str, torch.Tensor] | None = None  # the previous row's image path and pixels

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
                again = reuse_repeated and isinstance(image, str) and last is not None and last[0] == image
                item = preprocess(tm, image, text, policy, pixels=last[1] if again else None)
                if reuse_repeated and isinstance(image, str):
                    last = (image, item["pixel_values"])
                pending.append((i, item))
            except ValueError as exc:
                out[i] = Prediction(error=str(exc))
            except OSError as exc:  # a file system error on one row is that row's error
                out[i] = Prediction(error=f"image: could not be read ({type(exc).__name__})")
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
    preds, logits = predict_rows(tm, rows, batch_size=batch_size, total=len(manifest), progress=progress,
                                 policy=ImagePolicy(any_path=True), reuse_repeated=True)  # written by prepare
    bad = [(i, p.error) for i, p in enumerate(preds) if p.error]
    if bad:
        i, err = bad[0]
        raise UserError(f"{prepared_dir / (split + '.parquet')}: {len(bad)} rows could not be read, first row {i}: {err}")
    gold = encode_labels(manifest.frame["label"].tolist(), manifest.labels, manifest.multi_label)
    result = metrics.compute(logits, gold, tm.multi_label)
    return {f"{split}_{k}": v for k, v in result.items()}, preds, manifest
