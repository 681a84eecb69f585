"""The synthetic visual-entailment set: the offline default.

Each image holds one shape (circle / square / triangle) in one of six colours, at a random
size and position, on a noisy background. Each hypothesis names a colour and a shape, sometimes
with a modifier no image ever shows ("shiny", "wooden", ...). Labels, sampled uniformly:

* entailment:    colour and shape match the image, no modifier;
* neutral:       colour and shape match, plus a modifier (the image cannot confirm it);
* contradiction: colour or shape differs (with a modifier half of the time).

Text alone reaches about 2/3 (a modifier says "not entailment"), the image alone about 1/3;
only matching the two goes beyond. Written in the SNLI-VE layout (``flickr30k-images/<id>.jpg``
and ``snli_ve_{train,dev,test}.jsonl`` with ``Flickr30K_ID``, ``sentence2``, ``gold_label``),
so it runs through the same reader as the real set. Deterministic for a given seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from mitp.atomic import atomic_dir, write_json

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 220, 30),
    "purple": (140, 40, 200),
    "orange": (245, 140, 20),
}
SHAPES = ("circle", "square", "triangle")
MODIFIERS = ("shiny", "wooden", "metal", "glowing", "striped", "plastic")
TEMPLATES = (
    "a {c} {s}",
    "there is a {c} {s}",
    "the picture shows a {c} {s}",
    "a {c} {s} in the image",
)
LABELS = ("entailment", "neutral", "contradiction")
SPLIT_FILES = {"train": "snli_ve_train.jsonl", "val": "snli_ve_dev.jsonl", "test": "snli_ve_test.jsonl"}
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Example:
    image_id: str
    colour: str
    shape: str
    hypothesis: str
    label: str


def draw_image(rng: random.Random, colour: str, shape: str, size: int) -> Image.Image:
    """One shape in one colour, random size and position, on background noise."""
    nprng = np.random.default_rng(rng.getrandbits(32))
    bg = nprng.integers(90, 166, size=3)
    noise = nprng.normal(0, 18, size=(size, size, 3))
    img = Image.fromarray(np.clip(bg + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.42) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        h = r * 0.85
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r * 0.95, cy + r * 0.8), (cx + r * 0.95, cy + r * 0.8)], fill=fill)
    return img


def hypothesis_for(rng: random.Random, colour: str, shape: str, label: str) -> str:
    """A statement about (colour, shape) that has the given label for that image."""
    modifier = None
    c, s = colour, shape
    if label == "neutral":
        modifier = rng.choice(MODIFIERS)
    elif label == "contradiction":
        what = rng.choice(("colour", "shape", "both"))
        if what in ("colour", "both"):
            c = rng.choice([x for x in COLOURS if x != colour])
        if what in ("shape", "both"):
            s = rng.choice([x for x in SHAPES if x != shape])
        if rng.random() < 0.5:
            modifier = rng.choice(MODIFIERS)
    described = f"{modifier} {c}" if modifier else c
    return rng.choice(TEMPLATES).format(c=described, s=s)


def label_of(colour: str, shape: str, hypothesis: str) -> str:
    """The label rule, applied to a hypothesis text (used by tests to check the generator)."""
    words = hypothesis.split()
    named_colour = next(w for w in words if w in COLOURS)
    named_shape = next(w for w in words if w in SHAPES)
    if named_colour != colour or named_shape != shape:
        return "contradiction"
    return "neutral" if any(w in MODIFIERS for w in words) else "entailment"


def make_split(rng: random.Random, split: str, n: int, per_image: int) -> list[Example]:
    out: list[Example] = []
    n_images = -(-n // per_image)
    for i in range(n_images):
        image_id = f"{split}{i:06d}"
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        for _ in range(min(per_image, n - len(out))):
            label = rng.choice(LABELS)
            out.append(Example(image_id, colour, shape, hypothesis_for(rng, colour, shape, label), label))
    return out


def generate(params, out_dir: str | Path | None = None) -> Path:
    """Write the synthetic set in the SNLI-VE layout into ``out_dir`` (default data/raw/synthetic).

    Skips the work when the folder already holds a set made with the same settings.
    """
    cfg = params.data.synthetic
    out_dir = Path(out_dir) if out_dir else params.raw_dir("synthetic")
    recipe = {"format": FORMAT_VERSION, "seed": cfg.generator_seed, "image_size": cfg.image_size,
              "hypotheses_per_image": cfg.hypotheses_per_image,
              "sizes": {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}}
    marker = out_dir / "synthetic.json"
    if marker.exists() and json.loads(marker.read_text()) == recipe:
        return out_dir
    rng = random.Random(cfg.generator_seed)
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    with atomic_dir(out_dir) as tmp:
        (tmp / "flickr30k-images").mkdir()
        for split, n in sizes.items():
            examples = make_split(rng, split, n, cfg.hypotheses_per_image)
            drawn: set[str] = set()
            lines = []
            for k, ex in enumerate(tqdm(examples, desc=f"synthetic {split}", unit="pair", leave=False)):
                if ex.image_id not in drawn:
                    img = draw_image(rng, ex.colour, ex.shape, cfg.image_size)
                    img.save(tmp / "flickr30k-images" / f"{ex.image_id}.jpg", quality=95)
                    drawn.add(ex.image_id)
                lines.append(json.dumps({
                    "pairID": f"{split}-{k}", "Flickr30K_ID": ex.image_id,
                    "sentence1": f"an image of a {ex.colour} {ex.shape}",  # premise: never fed to the model
                    "sentence2": ex.hypothesis, "gold_label": ex.label,
                }))
            (tmp / SPLIT_FILES[split]).write_text("\n".join(lines) + "\n")
        write_json(tmp / "synthetic.json", recipe)
    return out_dir
