"""Frozen backbones: a ViT image encoder and a BERT text encoder, with their preprocessors.

Presets:

* ``vit-base+bert-base``: ``google/vit-base-patch16-224-in21k`` + ``bert-base-uncased``, fetched
  from the Hugging Face hub at pinned commits into ``data/backbones/<ids@revisions>/``.
* ``tiny-random``: a small ViT and BERT built from configs with a fixed seed, saved with
  ``save_pretrained`` and loaded back through the same ``from_pretrained`` path as real models.
  They use ``initializer_range=0.1``: at the default 0.02 random layers are near-identity maps
  with uniform attention and no variant gets past the text-only ceiling on the synthetic set.

Backbones never train: parameters have ``requires_grad=False`` and the modules stay in eval
mode (no dropout). ``config_only`` builds the pair on the meta device from configs shipped with
the code, for parameter counts without any download.

Reproducibility: the local folder's name carries the revisions, and its ``spec.json`` records
what was asked and what the hub resolved it to (commit hashes); a folder whose record differs
from the configuration stops the run naming the key. Image processors use the PIL backend on
every machine (``IMAGE_PROCESSOR_BACKEND``), recorded in the spec and so in the cache fingerprint.
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
    ViTImageProcessorPil,
    ViTModel,
)

from mitp.atomic import atomic_dir, write_json
from mitp.config.params import MODEL_KINDS, REPO_ROOT, BackboneConfig, Params
from mitp.errors import ConfigError, UserError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "backbone_configs"

VIT_BASE, BERT_BASE = "google/vit-base-patch16-224-in21k", "bert-base-uncased"
# Each preset part is (hub id, commit): a pinned commit means the same weights on every machine.
PRESETS: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "vit-base+bert-base": ((VIT_BASE, "b4569560a39a0f1af58e3ddaf17facf20ab919b0"),
                           (BERT_BASE, "86b5e0934494bd15c9632b12f734a8a67f723594")),
}
SHIPPED_CONFIGS = {
    VIT_BASE: CONFIG_DIR / "vit-base-patch16-224-in21k.json",
    BERT_BASE: CONFIG_DIR / "bert-base-uncased.json",
}
HUB_FILES = ["*.json", "vocab.txt", "*.model"]  # plus the weights: safetensors, else .bin

# transformers 5 picks the torchvision backend when torchvision is installed and PIL otherwise,
# and the two resize differently: pin one so every node computes the same pixels.
IMAGE_PROCESSOR_BACKEND = "pil"
SPEC_FILE = "spec.json"

# tiny-random: 4 layers of width 64, small enough to train on a CPU in minutes, deep enough for
# several interaction layers.
TINY = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=256, initializer_range=0.1)
TINY_FORMAT = 1  # bump when the tiny-random recipe changes (invalidates built copies and caches)


class BackboneError(UserError):
    pass


@dataclass(frozen=True)
class BackboneSpec:
    """Where each backbone comes from; also the backbone part of the cache fingerprint.

    ``*_revision`` is the revision asked for (a preset's pin unless overridden); once fetched,
    :func:`load` returns the spec with the commit the hub resolved it to.
    """

    preset: str
    vision: str  # hub id or local folder
    text: str
    vision_revision: str | None
    text_revision: str | None
    tiny_seed: int | None = None
    image_processor_backend: str = IMAGE_PROCESSOR_BACKEND

    @property
    def name(self) -> str:
        """The local folder's name: names every input of the fetch, so a change gets a new folder."""
        if self.preset == "tiny-random":
            return f"tiny-random-s{self.tiny_seed}-v{TINY_FORMAT}"
        return f"{_slug(self.vision)}@{_rev_tag(self.vision, self.vision_revision)}+" \
               f"{_slug(self.text)}@{_rev_tag(self.text, self.text_revision)}"

    def fingerprint(self) -> dict:
        fp = {"preset": self.preset, "vision": self.vision, "text": self.text,
              "vision_revision": self.vision_revision, "text_revision": self.text_revision,
              "image_processor_backend": self.image_processor_backend}
        if self.preset == "tiny-random":
            fp.update(tiny_seed=self.tiny_seed, tiny_config=TINY, tiny_format=TINY_FORMAT)
        return fp


@dataclass
class Backbones:
    vision: ViTModel
    text: BertModel
    image_processor: ViTImageProcessorPil
    tokenizer: BertTokenizer
    spec: BackboneSpec


def _slug(s: str) -> str:
    return s.rstrip("/").replace("/", "--")


def _rev_tag(repo: str, revision: str | None) -> str:
    if Path(repo).is_dir():
        return "local"
    if revision is None:
        return "unpinned"
    return revision[:12] if _is_commit(revision) else _slug(revision)


def _is_commit(revision: str) -> bool:
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


def spec_from_config(cfg: BackboneConfig) -> BackboneSpec:
    if cfg.preset == "tiny-random":
        return BackboneSpec("tiny-random", "tiny-random/vision", "tiny-random/text", None, None, cfg.tiny_seed)
    (vision, vision_pin), (text, text_pin) = PRESETS.get(cfg.preset, ((None, None), (None, None)))
    # An overridden id drops the preset's pin: that commit belongs to the preset's repo.
    vision_rev = cfg.vision_revision or (vision_pin if cfg.vision in (None, vision) else None)
    text_rev = cfg.text_revision or (text_pin if cfg.text in (None, text) else None)
    return BackboneSpec(cfg.preset, cfg.vision or vision, cfg.text or text, vision_rev, text_rev)


def local_dir(cfg: BackboneConfig) -> Path:
    """``<backbone.dir>/<name>``: the snapshot (or built tiny-random pair) later stages read."""
    root = Path(cfg.dir)
    return (root if root.is_absolute() else REPO_ROOT / root) / spec_from_config(cfg).name


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


def build_tiny_random(out_dir: Path, spec: BackboneSpec) -> Path:
    """Build and save the tiny-random pair into ``out_dir/{vision,text}`` (atomically)."""
    with atomic_dir(out_dir) as tmp:
        torch.manual_seed(spec.tiny_seed)
        vision = ViTModel(ViTConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                          add_pooling_layer=False)
        vision.save_pretrained(tmp / "vision")
        ViTImageProcessorPil(size={"height": TINY["image_size"], "width": TINY["image_size"]},
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
        write_json(tmp / SPEC_FILE, {"requested": spec.fingerprint(), "resolved": spec.fingerprint()})
    return out_dir


# --------------------------------------------------------------------------------------------
# fetch / load
# --------------------------------------------------------------------------------------------


def _hub_fetch(part: str, repo: str, revision: str | None, dest: Path) -> str:
    """Snapshot ``repo`` at ``revision`` into ``dest``; returns the commit it resolved to.

    Weights: ``*.safetensors`` when the revision has them, else ``*.bin`` (older repos).
    """
    from huggingface_hub import HfApi, snapshot_download

    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=False)
        files = [s.rfilename for s in info.siblings or []]
        weights = "*.safetensors" if any(f.endswith(".safetensors") for f in files) else "*.bin"
        snapshot_download(repo_id=repo, revision=info.sha, local_dir=dest, allow_patterns=HUB_FILES + [weights])
    except Exception as exc:  # network, auth, unknown repo or revision: say which and what to do
        raise BackboneError(
            f"backbone.{part}: could not fetch {repo!r} (revision {revision or 'main'}) from the "
            f"Hugging Face hub: {exc}. Point backbone.{part} at a local folder holding the "
            f"model (config.json + weights) to work offline."
        ) from exc
    return info.sha


def _fetch(target: Path, spec: BackboneSpec) -> None:
    resolved = {}
    with atomic_dir(target) as tmp:
        for part in ("vision", "text"):
            repo, rev = getattr(spec, part), getattr(spec, f"{part}_revision")
            if Path(repo).is_dir():  # a local folder: link, never copy twice
                (tmp / part).symlink_to(Path(repo).resolve(), target_is_directory=True)
                resolved[f"{part}_revision"] = None
                continue
            if rev is None:
                log.warning("backbone.%s_revision is not pinned: fetching the current main of %r; "
                            "pin a commit hash so every machine gets the same weights", part, repo)
            resolved[f"{part}_revision"] = _hub_fetch(part, repo, rev, tmp / part)
        write_json(tmp / SPEC_FILE, {"requested": spec.fingerprint(),
                                     "resolved": {**spec.fingerprint(), **resolved}})


def _check_spec(target: Path, spec: BackboneSpec) -> dict:
    """The recorded spec of ``target``; stops when it was made for another spec (names the key)."""
    recorded = json.loads((target / SPEC_FILE).read_text())
    wanted = spec.fingerprint()
    for key in wanted:
        if recorded["requested"].get(key) != wanted[key]:
            raise BackboneError(
                f"backbone.{key}: {target} was made for {recorded['requested'].get(key)!r} but the "
                f"configuration asks for {wanted[key]!r}; delete that folder to fetch again"
            )
    return recorded["resolved"]


def ensure_local(cfg: BackboneConfig) -> Path:
    """Make ``<backbone.dir>/<name>`` hold the pair (build tiny-random, or snapshot the hub).

    A complete copy carries ``spec.json``; a folder without it (interrupted or made by an older
    version) is made again, one with a different spec stops the run: never reused silently.
    """
    spec = spec_from_config(cfg)
    target = local_dir(cfg)
    if (target / SPEC_FILE).exists():
        _check_spec(target, spec)
        return target
    if spec.preset == "tiny-random":
        log.info("building tiny-random backbones (seed %d) into %s", spec.tiny_seed, target)
        return build_tiny_random(target, spec)
    _fetch(target, spec)
    return target


def load(cfg: BackboneConfig, device: torch.device | str = "cpu") -> Backbones:
    """Load the frozen pair from ``<backbone.dir>/<name>`` (made first if missing).

    The returned spec holds the revisions the hub resolved (commit hashes), as recorded at fetch.
    """
    asked = spec_from_config(cfg)
    for part in ("vision", "text"):
        if getattr(asked, f"{part}_revision") is None and asked.preset != "tiny-random" \
                and not Path(getattr(asked, part)).is_dir():
            log.warning("backbone.%s_revision is not pinned: results depend on when the copy was fetched", part)
    root = ensure_local(cfg)
    resolved = _check_spec(root, asked)
    spec = BackboneSpec(**{k: resolved[k] for k in ("preset", "vision", "text", "vision_revision",
                                                     "text_revision", "image_processor_backend")},
                        tiny_seed=resolved.get("tiny_seed"))
    # the local copy only: a missing file is an error here, never a fetch from the hub
    vision = ViTModel.from_pretrained(root / "vision", add_pooling_layer=False, local_files_only=True)
    text = BertModel.from_pretrained(root / "text", add_pooling_layer=False, local_files_only=True)
    image_processor = AutoImageProcessor.from_pretrained(root / "vision", backend=spec.image_processor_backend,
                                                         local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(root / "text", local_files_only=True)
    for m in (vision, text):
        freeze(m)
        m.to(device)
    return Backbones(vision, text, image_processor, tokenizer, spec)


def freeze(module: torch.nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


def _config_for(repo: str):
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


def config_only(cfg: BackboneConfig) -> tuple[ViTModel, BertModel]:
    """The pair built from configs on the meta device: shapes and counts, no weights, no download."""
    spec = spec_from_config(cfg)
    if spec.preset == "tiny-random":
        vcfg, tcfg = tiny_configs()
    else:
        vcfg, tcfg = _config_for(spec.vision), _config_for(spec.text)
    with torch.device("meta"):
        vision = AutoModel.from_config(vcfg, add_pooling_layer=False)
        text = AutoModel.from_config(tcfg, add_pooling_layer=False)
    return vision, text


def depths(cfg: BackboneConfig) -> tuple[int, int]:
    """Number of layers of the (vision, text) towers, read from configs (no weights loaded)."""
    spec = spec_from_config(cfg)
    if spec.preset == "tiny-random":
        return TINY["num_hidden_layers"], TINY["num_hidden_layers"]
    root = local_dir(cfg)
    cfgs = []
    for part, repo in (("vision", spec.vision), ("text", spec.text)):
        local = root / part / "config.json"
        cfg_ = AutoConfig.from_pretrained(local.parent) if local.exists() else _config_for(repo)
        cfgs.append(cfg_.num_hidden_layers)
    return cfgs[0], cfgs[1]


def check_depth(params: Params) -> None:
    """Config checks that need the backbone depth (read from configs, no weights)."""
    try:
        depth = min(depths(params.backbone))
    except (ConfigError, OSError):
        return  # a custom backbone not fetched yet: the model build checks it later
    start = params.model.interaction.start
    if MODEL_KINDS[params.model.kind] == "interaction" and start >= depth:
        raise ConfigError(f"model.interaction.start: {start} must be below the backbone depth {depth}")
    fusion = params.model.pmf.n_fusion_layers
    if params.model.kind == "pmf" and fusion > depth:
        raise ConfigError(f"model.pmf.n_fusion_layers: {fusion} is more than the backbone depth {depth}")
    if params.cache.layer > depth:
        raise ConfigError(f"cache.layer: {params.cache.layer} is beyond the backbone depth {depth}")
