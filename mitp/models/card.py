"""The model card (``model_card.json``) as a strict schema: a card is input, never trusted.

A model folder may come from anywhere (a downloaded MLflow model, a copy): what its card says
decides what the loader builds and reads, so every field is checked before anything is built.

* Unknown keys are refused (a ``backbone.config.dir`` cannot send the loader elsewhere).
* Backbones: ``tiny-random`` travels packed at exactly ``backbones/<its name>`` inside the folder;
  ``vit-base+bert-base`` is the preset's hub pair at its pinned commits (fetched into the
  project's own backbone folder, never one the card names). Other hub ids, local folders and
  the ``custom`` preset are refused: a card cannot make the loader fetch or read what it likes.
* Sizes within the params schema's bounds (``hub_size: 10**7`` is refused before allocation),
  layers within the preset's depth (``trained_from.layer: -3`` is refused), dtypes from a fixed
  list (they become ``getattr(torch, dtype)``), finite floats only.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mitp.config.data_schema import MAX_TEXT_LENGTH
from mitp.config.params import MAX_LAYERS, MAX_PROMPTS, MAX_WIDTH, MODEL_KINDS
from mitp.models import backbones as backbones_mod

CARD_FORMAT = 1
PACKED = "backbones"
MAX_LABELS = 100_000
MAX_NAME = 1_000  # characters of a label or another name
PRESET_DEPTH = {"tiny-random": backbones_mod.TINY["num_hidden_layers"], "vit-base+bert-base": 12}
Dtype = Literal["float16", "bfloat16", "float32"]
Name = Field(min_length=1, max_length=MAX_NAME)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class MITPSection(_Strict):
    kind: Literal[tuple(k for k in MODEL_KINDS if k != "pmf")]  # type: ignore[valid-type]
    prompt_length: int = Field(ge=1, le=MAX_PROMPTS)
    hub_size: int = Field(ge=1, le=MAX_WIDTH)
    start: int = Field(ge=0, le=MAX_LAYERS)
    interval: int = Field(ge=1, le=MAX_LAYERS)
    num_labels: int = Field(ge=1, le=MAX_LABELS)
    multi_label: bool
    dropout: float = Field(ge=0.0, lt=1.0)
    tau_init: float = Field(gt=0.0, le=1e6)
    prompt_init_std: float = Field(gt=0.0, le=1e3)


class PMFSection(_Strict):
    kind: Literal["pmf"]
    num_labels: int = Field(ge=1, le=MAX_LABELS)
    multi_label: bool
    n_fusion_layers: int = Field(ge=1, le=MAX_LAYERS)
    n_qp: int = Field(ge=1, le=MAX_PROMPTS)
    n_qcp: int = Field(ge=0, le=MAX_PROMPTS)
    n_fcp: int = Field(ge=0, le=MAX_PROMPTS)
    mapper_hidden: int | None = Field(ge=1, le=MAX_WIDTH)
    prompt_init_std: float = Field(gt=0.0, le=1e3)


class Task(_Strict):
    type: Literal["single_label", "multi_label"]
    threshold: float | None = Field(gt=0.0, lt=1.0)


class BackboneCfg(_Strict):
    """``params.backbone`` without ``dir``: where the backbones live is never the card's say."""

    preset: Literal["tiny-random", "vit-base+bert-base"]
    vision: str | None
    text: str | None
    vision_revision: str | None
    text_revision: str | None
    tiny_seed: int = Field(ge=0, le=2**32 - 1)


class Recipe(_Strict):
    tiny_seed: int = Field(ge=0, le=2**32 - 1)
    config: dict[str, int | float]
    format: int


class BackboneSection(_Strict):
    config: BackboneCfg
    name: str = Name
    packed: str | None
    recipe: Recipe | None = None
    resolved_revisions: dict[Literal["vision", "text"], str | None] | None = None

    @model_validator(mode="after")
    def _confined(self) -> BackboneSection:
        cfg = self.config
        if cfg.preset == "tiny-random":
            if cfg.vision or cfg.text or cfg.vision_revision or cfg.text_revision:
                raise ValueError("config: tiny-random names no hub id or revision")
            name = f"tiny-random-s{cfg.tiny_seed}-v{backbones_mod.TINY_FORMAT}"
            if self.name != name or self.packed != f"{PACKED}/{name}":
                raise ValueError(f"packed: tiny-random backbones travel packed at {PACKED}/{name} inside the "
                                 f"model folder (name {self.name!r}, packed {self.packed!r})")
            if self.recipe is None or self.recipe.tiny_seed != cfg.tiny_seed \
                    or self.recipe.config != backbones_mod.TINY or self.recipe.format != backbones_mod.TINY_FORMAT:
                raise ValueError("recipe: not the tiny-random recipe this code builds")
            return self
        (vision, vision_pin), (text, text_pin) = backbones_mod.PRESETS[cfg.preset]
        revs = self.resolved_revisions or {}
        if self.packed is not None:
            raise ValueError(f"packed: {cfg.preset} backbones are not packed into model folders")
        if cfg.vision not in (None, vision) or cfg.text not in (None, text):
            raise ValueError(f"config: a model card may name only the {cfg.preset} preset's own ids "
                             f"({vision}, {text}); other hub ids and local folders are refused")
        for part, pin in (("vision", vision_pin), ("text", text_pin)):
            asked = getattr(cfg, f"{part}_revision")
            if asked not in (None, pin) or revs.get(part) not in (None, pin):
                raise ValueError(f"{part}_revision: only the preset's pinned commit {pin} is fetched for a model card")
        return self


class Preprocessing(_Strict):
    image_processor: str = Name
    image_size: dict[Literal["height", "width"], int] | None
    image_mean: list[float] = Field(min_length=1, max_length=4)
    image_std: list[float] = Field(min_length=1, max_length=4)
    rescale_factor: float | None
    tokenizer: str = Name
    do_lower_case: bool | None
    max_text_length: int = Field(ge=1, le=MAX_TEXT_LENGTH)

    @model_validator(mode="after")
    def _sizes(self) -> Preprocessing:
        if self.image_size and not all(1 <= v <= 4096 for v in self.image_size.values()):
            raise ValueError("image_size: each side must be 1..4096")
        return self


class TrainedFrom(_Strict):
    source: Literal["cache", "raw"]
    layer: int = Field(ge=0, le=MAX_LAYERS)
    dtype: Dtype | None
    cache_fingerprint: str | None = Field(max_length=MAX_NAME)


class Dataset(_Strict):
    name: str = Name
    manifest_sha256: str = Field(max_length=MAX_NAME)


class Training(_Strict):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=True, strict=True)  # a metric may be nan

    run_id: str | None = Field(max_length=MAX_NAME)
    best_epoch: int = Field(ge=0)
    git_commit: str = Field(max_length=MAX_NAME)
    seed: int
    autocast: Literal["bfloat16", "float16"] | None = None
    metrics: dict[str, float | int | None]


class Card(_Strict):
    format: Literal[1]
    model: MITPSection | PMFSection = Field(discriminator="kind")
    labels: list[str] = Field(min_length=1, max_length=MAX_LABELS)
    task: Task
    backbone: BackboneSection
    preprocessing: Preprocessing
    trained_from: TrainedFrom
    dataset: Dataset
    training: Training

    @model_validator(mode="after")
    def _consistent(self) -> Card:
        if len(set(self.labels)) != len(self.labels) or not all(0 < len(n) <= MAX_NAME for n in self.labels):
            raise ValueError("labels: must be distinct, non-empty names")
        if self.model.num_labels != len(self.labels):
            raise ValueError(f"model.num_labels: {self.model.num_labels}, but the card lists {len(self.labels)} labels")
        multi = self.task.type == "multi_label"
        if self.model.multi_label != multi or (self.task.threshold is None) == multi:
            raise ValueError("task: type, threshold and model.multi_label disagree")
        depth = PRESET_DEPTH[self.backbone.config.preset]
        if self.trained_from.layer > depth:
            raise ValueError(f"trained_from.layer: {self.trained_from.layer} is beyond the backbone depth {depth}")
        if (self.trained_from.source == "cache") != (self.trained_from.dtype is not None):
            raise ValueError("trained_from: a model trained from the cache names its dtype, one from raw inputs none")
        if isinstance(self.model, MITPSection) and MODEL_KINDS[self.model.kind] == "interaction" \
                and self.model.start >= depth:
            raise ValueError(f"model.start: {self.model.start} must be below the backbone depth {depth}")
        if isinstance(self.model, PMFSection) and self.model.n_fusion_layers > depth:
            raise ValueError(f"model.n_fusion_layers: {self.model.n_fusion_layers} is more than the depth {depth}")
        return self


def validate(raw: Any, source: str) -> dict[str, Any]:
    """The card as a plain dict once it passed the schema; ValueError with one line per problem,
    each naming ``source`` and the key."""
    try:
        Card.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors()[:5]:
            loc = [str(p) for p in err["loc"]]
            if loc[:1] == ["model"] and len(loc) > 1 and loc[1] in MODEL_KINDS:
                del loc[1]  # the union's tag
            key = ".".join(loc)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"{source}: {key}: {msg}" if key else f"{source}: {msg}")
        raise ValueError("; ".join(lines)) from None
    return raw
