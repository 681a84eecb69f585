"""The one validated configuration: ``params.yaml`` loaded into pydantic models.

Every stage reads its settings from here. Unknown keys and impossible values are errors that
name the key (``model.interaction.start: must be below the backbone depth 4, got 6``), so a
typo in ``params.yaml`` or in a ``-S key=value`` override never goes unnoticed.

Overrides use the spelling of ``dvc exp run -S``: ``model.hub_size=128``; the value is parsed
as YAML (``true``, ``1e-3``, ``[1, 2]`` all work; a quoted value stays a string: ``'1.0'``),
without anchors or aliases (``&a``, ``*a``: a few hundred characters of nested aliases stand for
billions of items); a params file whose aliases expand to more than a million values is refused.
Sizes and seeds have upper bounds (``seed`` and ``extra_seeds``: 0 .. 2**32 - 1, what numpy's
seeding takes), and a message quotes at most a few hundred characters of a bad value.

This module is the schema and its loading only; rules across keys that need the backbone depth
live with the models (:mod:`mitp.models.rules`).
"""

from __future__ import annotations

import copy
import re
import reprlib
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from mitp.config.data_schema import SEED_MAX, DataConfig, Strict
from mitp.config.dotted_keys import flatten
from mitp.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
SIZE_MAX = 1 << 16  # upper bound of the batch sizes (the paper: 32 to 64)
DEFAULT_PARAMS = REPO_ROOT / "params.yaml"


def shown_path(path: str | Path) -> str:
    """A path as outputs record it: relative to the repository root when inside it, so committed
    files and DVC hashes do not depend on where the repository is checked out; else as given."""
    text = str(path)
    p = Path(text)
    if "://" in text or not p.is_absolute() or not p.is_relative_to(REPO_ROOT):
        return text
    return p.relative_to(REPO_ROOT).as_posix()


# Every model kind, once: kind -> which layers it changes, which decides where the feature cache
# may stop (hidden states entering layer k are cached, so nothing below k may change):
#   "interaction": prompts from ``model.interaction.start`` on (MITP and its ablation);
#   "top": prompts on the top ``model.pmf.n_fusion_layers`` layers (PMF);
#   "none": frozen towers, only the readout trains (the cache may stop anywhere);
#   "all": every layer trains (no feature cache). A new kind is one line here plus its builder.
MODEL_KINDS: dict[str, str] = {
    "mitp": "interaction",
    "mitp_no_hub": "interaction",
    "late_fusion": "none",
    "pmf": "top",
    "finetune": "all",
}
ModelKind = Literal[tuple(MODEL_KINDS)]  # type: ignore[valid-type]

# Upper bounds of the model's sizes (far above any sensible setting): a typo, or a model card
# naming hub_size 10**7, is refused before anything is allocated. Trained-model cards are
# checked against the same bounds (mitp.models.card).
MAX_PROMPTS = 1024  # prompt tokens per layer (model.prompt_length, PMF's n_qp/n_qcp/n_fcp)
MAX_WIDTH = 8192  # hidden widths (model.hub_size, model.pmf.mapper_hidden)
MAX_LAYERS = 256  # layer indices and counts


class BackboneConfig(Strict):
    """Which frozen encoders to use.

    ``preset`` names a known pair; ``vision``/``text`` override the hub ids (or local folders)
    of the pair, ``*_revision`` pins a hub revision (commit hash or tag).
    """

    preset: Literal["tiny-random", "vit-base+bert-base", "custom"] = "tiny-random"
    vision: str | None = None
    text: str | None = None
    vision_revision: str | None = None
    text_revision: str | None = None
    dir: str = "data/backbones"
    tiny_seed: Seed = 0

    @model_validator(mode="after")
    def _custom_needs_ids(self) -> BackboneConfig:
        if self.preset == "custom" and not (self.vision and self.text):
            raise ValueError("preset 'custom' needs both backbone.vision and backbone.text")
        return self


class InteractionConfig(Strict):
    start: int = Field(0, ge=0, le=MAX_LAYERS, description="first interaction layer s (from the top-aligned towers)")
    interval: int = Field(1, ge=1, le=MAX_LAYERS, description="distance D between interaction layers")


class PMFParams(Strict):
    """``model.pmf``: PMF's sizes (defaults of its official model file)."""

    n_fusion_layers: int = Field(2, ge=1, le=MAX_LAYERS, description="F: prompted top layers (first one: depth - F)")
    n_qp: int = Field(4, ge=1, le=MAX_PROMPTS, description="query prompts per fusion layer and direction")
    n_qcp: int = Field(4, ge=0, le=MAX_PROMPTS, description="query-context prompts per fusion layer and direction")
    n_fcp: int = Field(4, ge=0, le=MAX_PROMPTS, description="fusion-context prompts per fusion layer and tower")
    mapper_hidden: int | None = Field(None, ge=1, le=MAX_WIDTH, description="null: max(d_v, d_t) / 2")


class ModelConfig(Strict):
    kind: ModelKind = "mitp"
    prompt_length: int = Field(8, ge=1, le=MAX_PROMPTS, description="M: prompts per layer (the paper: 16)")
    hub_size: int = Field(64, ge=1, le=MAX_WIDTH, description="h: hub vectors (the paper: 384)")
    interaction: InteractionConfig = InteractionConfig()
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    tau_init: float = Field(1.0 / 0.07, gt=0.0)
    prompt_init_std: float = Field(0.02, gt=0.0)
    pmf: PMFParams = PMFParams()

    def first_interaction_layer(self, depth: int) -> int:
        """The first aligned layer this kind changes (hidden states may enter at most there):
        ``interaction.start`` for MITP, ``depth - pmf.n_fusion_layers`` for PMF, the depth for
        late fusion; 0 for finetune (it trains every layer, so nothing below is fixed)."""
        changes = MODEL_KINDS[self.kind]
        if changes == "interaction":
            return self.interaction.start
        if changes == "top":
            return depth - self.pmf.n_fusion_layers
        return depth if changes == "none" else 0


class CacheConfig(Strict):
    enabled: bool = True
    layer: int = Field(0, ge=0, le=MAX_LAYERS, description="k: hidden states entering layer k are cached")
    dir: str = "data/features"
    dtype: Literal["float16", "float32"] = "float16"
    shard_size: int = Field(4096, ge=1, le=1 << 20, description="samples (or unique images) per shard")
    batch_size: int = Field(64, ge=1, le=SIZE_MAX)


class TrainConfig(Strict):
    epochs: int = Field(30, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1, le=SIZE_MAX)
    eval_batch_size: int = Field(256, ge=1, le=SIZE_MAX)
    lr: float = Field(1e-3, gt=0.0)
    backbone_lr: float = Field(1e-4, gt=0.0, description="model.kind=finetune: learning rate of the backbones")
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    grad_clip: float = Field(1.0, gt=0.0)
    num_workers: int = Field(0, ge=0, le=1024, description=(
        "loader parallelism: DataLoader worker processes on raw inputs, reader threads on the feature "
        "cache; 0: none on CPU, a GPU's default on CUDA (mitp/training/loaders.py)"))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_steps_per_epoch: int | None = Field(None, ge=1, le=10**9, description="cap for smoke runs")
    patience: int | None = Field(
        None, ge=1, le=100_000, description="early stopping: end the run after this many epochs without a better "
                                "validation metric (the schedule still spans `epochs`); null: run every epoch")
    compile: Literal["auto"] | bool = Field(
        "auto", description="torch.compile the training forward/backward (auto: on CUDA with Triton; see mitp/training/compiled.py)")
    checkpoint_dir: str = "data/runs"
    threads: int = Field(1, ge=1, le=1024, description="torch CPU threads of one run: the numbers depend on it "
                                                         "(float sums split otherwise), so trials and standalone runs "
                                                         "use the same (mitp/determinism.py)")
    cpu_kernels: Literal["native", "portable"] = Field(
        "native", description="native: this CPU's fastest kernels (numbers repeat on the same CPU model); portable: "
                              "the same numbers on any x86-64 CPU with AVX2, slower (mitp/determinism.py)")
    deterministic: bool = Field(True, description="CUDA: deterministic algorithms (cuBLAS workspace, no cuDNN autotune)")


class MlflowConfig(Strict):
    tracking_uri: str | None = Field(None, description="null: sqlite:///<repo>/mlflow.db; env MLFLOW_TRACKING_URI wins")
    experiment: str = "mitp"
    register_model: str | None = Field(None, description="registry name each training run's model is registered "
                                                          "under (the sweep: its best trial); null: none")
    register_table: bool = Field(True, description="the main table registers each kind's run on `seed` as "
                                                   "<kind>-<dataset> (when register_model is null)")
    log_system_metrics: bool = Field(True, description="CPU/GPU/memory of each run as MLflow system metrics")


class RayConfig(Strict):
    address: str | None = Field(None, description="null: env RAY_ADDRESS, else a local Ray sized to this machine")
    storage_path: str | None = Field(None, description="null: <repo>/ray_results; a shared path or URI on clusters")
    num_cpus: int | None = Field(None, ge=1, le=1 << 20, description="CPUs of a local Ray (null: all)")


class ResourcesConfig(Strict):
    cpu: float = Field(1.0, gt=0.0)
    gpu: float = Field(0.0, ge=0.0)


class AshaConfig(Strict):
    grace_period: int = Field(1, ge=1, le=100_000, description="epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1.0)


class SweepConfig(Strict):
    """``sweep:``; ``space`` and ``train`` are parsed (forms, keys) by :mod:`mitp.config.space`."""

    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$")
    space: dict[str, Any] = Field(default_factory=dict)
    search: Literal["grid", "random", "optuna"] = Field(
        "grid", description="grid / random: Tune's variant generator (every grid value, choice and ranges drawn at "
                            "random, num_samples repeats, each with its own seed); optuna: Optuna's TPE proposes "
                            "num_samples trials from the space (grid lists become choices)")
    num_samples: int = Field(1, ge=1, le=100_000, description="repeats of the grid (each with its own seed) or random samples; "
                                                  "search=optuna: the number of trials TPE proposes")
    metric: str = Field("auto", description="auto: val_accuracy (single-label) or val_f1_micro (multi-label)")
    mode: Literal["max", "min"] = "max"
    scheduler: Literal["none", "asha"] = "none"
    asha: AshaConfig = AshaConfig()
    max_concurrent_trials: int | None = Field(None, ge=1, le=100_000)
    resources_per_trial: ResourcesConfig = ResourcesConfig()
    max_failures: int = Field(1, ge=0, le=1000, description="retries of a failed trial, from its last checkpoint")
    train: dict[str, Any] = Field(default_factory=dict, description="train.* overrides inside trials")


class ReportConfig(Strict):
    dir: str = "reports"


def dataset_names() -> list[str]:
    return sorted(k for k, f in DataConfig.model_fields.items() if isinstance(f.default, BaseModel))


class Params(Strict):
    """Root of ``params.yaml``."""

    seed: Seed = Field(0, description="0 .. 2**32 - 1 (numpy seeding)")
    extra_seeds: list[Seed] = Field(
        default_factory=lambda: [1, 2], min_length=1,
        description="the main table (stage train, mitp/training/table.py) trains every kind on seed and on each of "
                    "these; the report gives mean ± std and intervals over all of them")
    datasets: list[str] = Field(default_factory=lambda: ["synthetic"], min_length=1)
    backbone: BackboneConfig = BackboneConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    cache: CacheConfig = CacheConfig()
    train: TrainConfig = TrainConfig()
    mlflow: MlflowConfig = MlflowConfig()
    ray: RayConfig = RayConfig()
    sweep: SweepConfig = SweepConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Params:
        if len(set(self.extra_seeds)) != len(self.extra_seeds):
            raise ValueError(f"extra_seeds: {self.extra_seeds} lists a seed twice (one run would count twice "
                             "in the mean ± std)")
        known = dataset_names()
        for name in self.datasets:
            if name not in known:
                raise ValueError(f"datasets: unknown dataset {name!r} (known: {', '.join(sorted(known))})")
        return self

    # ----------------------------------------------------------------------------------------
    def dataset(self, name: str):
        """The ``data.<name>`` section, with a clear error for unknown names."""
        if name not in dataset_names():
            raise ConfigError(f"unknown dataset {name!r} (known: {', '.join(dataset_names())})")
        return getattr(self.data, name)

    def resolve(self, path: str | Path) -> Path:
        """A path from the config, relative to the repository root unless absolute."""
        p = Path(path)
        return p if p.is_absolute() else REPO_ROOT / p

    def raw_dir(self, name: str) -> Path:
        """``data/raw/<name>``: what download fetched (or generated)."""
        return self.resolve(self.data.root) / "raw" / name

    def prepared_dir(self, name: str) -> Path:
        """``data/prepared/<name>``: the manifests."""
        return self.resolve(self.data.root) / "prepared" / name

    def features_dir(self, name: str) -> Path:
        """``data/features/<name>``: the feature cache."""
        return self.resolve(self.cache.dir) / name


# --------------------------------------------------------------------------------------------
# Loading and overrides
# --------------------------------------------------------------------------------------------


class _YamlLoader(yaml.SafeLoader):
    """YAML as params files and ``-S`` values are read: a duplicate key is an error (YAML would
    let the later one silently replace the earlier section), and ``1e-3`` is a number (YAML 1.1
    wants a dot in a float; a quoted ``'1e-3'`` stays a string)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


class _OverrideLoader(_YamlLoader):
    """A ``-S`` value: no anchors (``&a``) or aliases (``*a``). A value of a few hundred
    characters that nests aliases (``[&a0 [1,1], &a1 [*a0,*a0], ...]``) stands for billions of
    items once anything walks it; a command-line value never needs them."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            what = "alias (*name)" if isinstance(event, yaml.AliasEvent) else "anchor (&name)"
            raise yaml.composer.ComposerError(None, None, f"a YAML {what} is not allowed in a -S value",
                                              event.start_mark)
        return super().compose_node(parent, index)


MAX_NODES = 1_000_000  # values a params file may stand for once its aliases are expanded
MESSAGE_CHARS = 300  # longest part of an input a message quotes
_short_repr = reprlib.Repr()
_short_repr.maxlevel, _short_repr.maxstring, _short_repr.maxother = 3, 120, 120


def clip(text: str, limit: int = MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters (with how long it was), for quoting input in a message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def short_repr(value: Any) -> str:
    """``repr(value)`` bounded in depth, items and length, whatever the value's expanded size."""
    return clip(_short_repr.repr(value))


def _expanded_size(value: Any, limit: int) -> int:
    """How many values ``value`` stands for with shared (aliased) parts counted each time; stops past ``limit``."""
    count, stack = 0, [value]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return count


def _load_yaml(text: str, where: str, loader: type = _YamlLoader) -> Any:
    """Parse YAML; any error becomes one line naming ``where`` and the line. A document whose
    aliases expand to more than MAX_NODES values is refused (a billion laughs)."""
    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{where}: {line}{clip(str(exc.problem or exc.context))}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {clip(' '.join(str(exc).split()))}") from None
    if _expanded_size(data, MAX_NODES) > MAX_NODES:
        raise ConfigError(f"{where}: its YAML aliases expand to more than {MAX_NODES:,} values (an alias bomb?)")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``"model.hub_size=128"`` -> ``("model.hub_size", 128)`` (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {clip(repr(item))}: expected key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {clip(repr(item))}: empty key")
    return key, (_load_yaml(raw, f"override {clip(key, 100)}", _OverrideLoader) if raw.strip() else None)


def apply_overrides(raw: dict, overrides: list[str] | dict[str, Any] | None) -> dict:
    """Return a copy of ``raw`` with dotted-key overrides applied (intermediate dicts created)."""
    out = copy.deepcopy(raw)
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for key, value in items:
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def _format_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = err.get("input")
        plain = err["type"] in ("extra_forbidden", "value_error") or isinstance(got, dict)
        got_s = "" if plain else f" (got {short_repr(got)})"
        lines.append(f"{source}: {msg}" if key == "<root>" else f"{source}: {key}: {msg}{got_s}")
    return "\n".join(lines)


def validate(raw: dict, source: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None


def load_raw(path: str | Path | None = None) -> dict:
    """The params file as a dict; a missing, unreadable, empty or malformed file is a ConfigError."""
    path = Path(path) if path else DEFAULT_PARAMS
    if not path.exists():
        raise ConfigError(f"{path}: params file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: is a folder, not a params file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    raw = _load_yaml(text, str(path))
    if raw is None:  # silently running on the built-in defaults would hide a truncated file
        raise ConfigError(f"{path}: no settings (the file is empty or only comments)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return raw


def load_params(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> Params:
    """Load ``params.yaml`` (default: the repository's), apply overrides, validate."""
    source = str(path or DEFAULT_PARAMS.name)
    return validate(apply_overrides(load_raw(path), overrides), source)


def to_flat_dict(params: BaseModel | dict, prefix: str = "") -> dict[str, Any]:
    """``{"model.hub_size": 64, ...}``: the form MLflow params and sweep configs use."""
    return flatten(params.model_dump() if isinstance(params, BaseModel) else params, prefix)
