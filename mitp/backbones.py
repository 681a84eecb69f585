"""Frozen backbones: a ViT image encoder and a BERT text encoder, with their preprocessors.

Presets:

* ``vit-base+bert-base``: ``google/vit-base-patch16-224-in21k`` + ``bert-base-uncased``, fetched
  from the Hugging Face hub (a snapshot at a pinned revision lands in ``data/backbones/``).
* ``tiny-random``: a small ViT and BERT built from configs with a fixed seed, saved with
  ``save_pretrained`` and loaded back through the same ``from_pretrained`` path as real models.
  They use ``initializer_range=0.1``: at the default 0.02 random layers are near-identity maps
  with uniform attention and no variant gets past the text-only ceiling on the synthetic set.

Backbones never train: parameters have ``requires_grad=False`` and the modules stay in eval
mode (no dropout). ``config_only`` builds the pair on the meta device from configs shipped with
the code, for parameter counts without any download.
"""

from __future__ import annotations

import json
import logging
import string
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertTokenizer,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

from mitp.atomic import atomic_dir, write_json
from mitp.config import Params
from mitp.errors import ConfigError, UserError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "backbone_configs"

PRESETS: dict[str, tuple[str, str]] = {
    "vit-base+bert-base": ("google/vit-base-patch16-224-in21k", "bert-base-uncased"),
}
SHIPPED_CONFIGS = {
    "google/vit-base-patch16-224-in21k": CONFIG_DIR / "vit-base-patch16-224-in21k.json",
    "bert-base-uncased": CONFIG_DIR / "bert-base-uncased.json",
}
HUB_FILES = ["*.json", "*.safetensors", "vocab.txt", "*.model"]

# tiny-random: DESIGN.md section 3's suggested size.
TINY = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=256, initializer_range=0.1)
TINY_FORMAT = 1  # bump when the tiny-random recipe changes (invalidates built copies and caches)


class BackboneError(UserError):
    pass


@dataclass(frozen=True)
class BackboneSpec:
    """Where each backbone comes from; also the backbone part of the cache fingerprint."""

    preset: str
    vision: str  # hub id or local folder
    text: str
    vision_revision: str | None
    text_revision: str | None
    tiny_seed: int | None = None

    @property
    def name(self) -> str:
        if self.preset == "tiny-random":
            return f"tiny-random-s{self.tiny_seed}-v{TINY_FORMAT}"
        return self.preset if self.preset != "custom" else f"{_slug(self.vision)}+{_slug(self.text)}"

    def fingerprint(self) -> dict:
        fp = {"preset": self.preset, "vision": self.vision, "text": self.text,
              "vision_revision": self.vision_revision, "text_revision": self.text_revision}
        if self.preset == "tiny-random":
            fp.update(tiny_seed=self.tiny_seed, tiny_config=TINY, tiny_format=TINY_FORMAT)
        return fp


@dataclass
class Backbones:
    vision: ViTModel
    text: BertModel
    image_processor: ViTImageProcessor
    tokenizer: BertTokenizer
    spec: BackboneSpec


def _slug(s: str) -> str:
    return s.rstrip("/").replace("/", "--")


def spec_from_params(params: Params) -> BackboneSpec:
    b = params.backbone
    if b.preset == "tiny-random":
        return BackboneSpec("tiny-random", "tiny-random/vision", "tiny-random/text", None, None, b.tiny_seed)
    vision, text = PRESETS.get(b.preset, (None, None))
    return BackboneSpec(b.preset, b.vision or vision, b.text or text, b.vision_revision, b.text_revision)


def local_dir(params: Params) -> Path:
    """``data/backbones/<name>``: the snapshot (or built tiny-random pair) later stages read."""
    return params.resolve(params.backbone.dir) / spec_from_params(params).name


# --------------------------------------------------------------------------------------------
# tiny-random
# --------------------------------------------------------------------------------------------


def tiny_vocab() -> list[str]:
    """WordPiece vocab: specials, every printable character (also as ``##`` continuation),
    and a few hundred common English words, so any English text tokenizes without [UNK]."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [c for c in string.ascii_lowercase + string.digits + string.punctuation]
    words = (CONFIG_DIR / "tiny_vocab_words.txt").read_text().split()
    vocab = specials + chars + ["##" + c for c in chars]
    seen = set(vocab)
    for w in words:
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    return vocab


def build_tiny_random(out_dir: Path, seed: int) -> Path:
    """Build and save the tiny-random pair into ``out_dir/{vision,text}`` (atomically)."""
    with atomic_dir(out_dir) as tmp:
        torch.manual_seed(seed)
        vision = ViTModel(ViTConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                          add_pooling_layer=False)
        vision.save_pretrained(tmp / "vision")
        ViTImageProcessor(size={"height": TINY["image_size"], "width": TINY["image_size"]},
                          image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]).save_pretrained(tmp / "vision")

        vocab = tiny_vocab()
        (tmp / "text").mkdir()
        (tmp / "text" / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab)}, do_lower_case=True)
        tokenizer.save_pretrained(tmp / "text")
        text_cfg = {k: v for k, v in TINY.items() if k not in ("image_size", "patch_size")}
        text = BertModel(BertConfig(vocab_size=len(vocab), max_position_embeddings=512, **text_cfg),
                         add_pooling_layer=False)
        text.save_pretrained(tmp / "text")
        write_json(tmp / "recipe.json", {"tiny_seed": seed, "config": TINY, "format": TINY_FORMAT})
    return out_dir


# --------------------------------------------------------------------------------------------
# fetch / load
# --------------------------------------------------------------------------------------------


def ensure_local(params: Params) -> Path:
    """Make ``data/backbones/<name>`` hold the pair (build tiny-random, or snapshot the hub)."""
    spec = spec_from_params(params)
    target = local_dir(params)
    if (target / "vision" / "config.json").exists() and (target / "text" / "config.json").exists():
        return target
    if spec.preset == "tiny-random":
        log.info("building tiny-random backbones (seed %d) into %s", spec.tiny_seed, target)
        return build_tiny_random(target, spec.tiny_seed)
    with atomic_dir(target) as tmp:
        for part, repo, rev in (("vision", spec.vision, spec.vision_revision), ("text", spec.text, spec.text_revision)):
            if Path(repo).is_dir():  # a local folder: link, never copy twice
                (tmp / part).symlink_to(Path(repo).resolve(), target_is_directory=True)
                continue
            from huggingface_hub import snapshot_download

            try:
                snapshot_download(repo_id=repo, revision=rev, local_dir=tmp / part, allow_patterns=HUB_FILES)
            except Exception as exc:  # network, auth, unknown repo: say which and what to do
                raise BackboneError(
                    f"backbone.{part}: could not fetch {repo!r} (revision {rev or 'main'}) from the "
                    f"Hugging Face hub: {exc}. Point backbone.{part} at a local folder holding the "
                    f"model (config.json + weights) to work offline."
                ) from exc
        write_json(tmp / "spec.json", spec.fingerprint())
    return target


def load(params: Params, device: torch.device | str = "cpu") -> Backbones:
    """Load the frozen pair from ``data/backbones/<name>`` (made first if missing)."""
    root = ensure_local(params)
    spec = spec_from_params(params)
    vision = ViTModel.from_pretrained(root / "vision", add_pooling_layer=False)
    text = BertModel.from_pretrained(root / "text", add_pooling_layer=False)
    image_processor = AutoImageProcessor.from_pretrained(root / "vision")
    tokenizer = AutoTokenizer.from_pretrained(root / "text")
    for m in (vision, text):
        freeze(m)
        m.to(device)
    return Backbones(vision, text, image_processor, tokenizer, spec)


def freeze(module: torch.nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


def _config_for(repo: str, revision: str | None):
    shipped = SHIPPED_CONFIGS.get(repo)
    if shipped is not None:
        return AutoConfig.for_model(**json.loads(shipped.read_text()))
    if Path(repo).is_dir():
        return AutoConfig.from_pretrained(repo)
    raise ConfigError(f"backbone: no shipped config for {repo!r}; use a local folder or a preset")


def tiny_configs() -> tuple[ViTConfig, BertConfig]:
    return ViTConfig(**TINY), BertConfig(vocab_size=len(tiny_vocab()),
                                         **{k: v for k, v in TINY.items() if k not in ("image_size", "patch_size")})


def tiny_config_models() -> tuple[ViTModel, BertModel]:
    """The tiny-random pair built in memory from its configs (weights from torch's current RNG),
    frozen: for benchmarks that need the demo model's shapes and cost, not its saved weights."""
    vcfg, tcfg = tiny_configs()
    vision, text = ViTModel(vcfg, add_pooling_layer=False), BertModel(tcfg, add_pooling_layer=False)
    for m in (vision, text):
        freeze(m)
    return vision, text


def config_only(params: Params) -> tuple[ViTModel, BertModel]:
    """The pair built from configs on the meta device: shapes and counts, no weights, no download."""
    spec = spec_from_params(params)
    if spec.preset == "tiny-random":
        vcfg, tcfg = tiny_configs()
    else:
        vcfg = _config_for(spec.vision, spec.vision_revision)
        tcfg = _config_for(spec.text, spec.text_revision)
    with torch.device("meta"):
        vision = AutoModel.from_config(vcfg, add_pooling_layer=False)
        text = AutoModel.from_config(tcfg, add_pooling_layer=False)
    return vision, text


def depths(params: Params) -> tuple[int, int]:
    """Number of layers of the (vision, text) towers, read from configs (no weights loaded)."""
    spec = spec_from_params(params)
    if spec.preset == "tiny-random":
        return TINY["num_hidden_layers"], TINY["num_hidden_layers"]
    root = local_dir(params)
    cfgs = []
    for part, repo, rev in (("vision", spec.vision, spec.vision_revision), ("text", spec.text, spec.text_revision)):
        local = root / part / "config.json"
        cfg = AutoConfig.from_pretrained(local.parent) if local.exists() else _config_for(repo, rev)
        cfgs.append(cfg.num_hidden_layers)
    return cfgs[0], cfgs[1]


def check_depth(params: Params) -> None:
    """Config checks that need the backbone depth (read from configs, no weights)."""
    try:
        depth = min(depths(params))
    except (ConfigError, OSError):
        return  # a custom backbone not fetched yet: the model build checks it later
    start = params.model.interaction.start
    if params.model.kind != "late_fusion" and start >= depth:
        raise ConfigError(f"model.interaction.start: {start} must be below the backbone depth {depth}")
    if params.cache.layer > depth:
        raise ConfigError(f"cache.layer: {params.cache.layer} is beyond the backbone depth {depth}")
