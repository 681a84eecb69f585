"""The synthetic set: deterministic, its label rule holds, and the text-only ceiling is ~2/3."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

from mitp.data import synthetic


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _rows(folder, split_file):
    return [json.loads(line) for line in (folder / split_file).read_text().splitlines() if line.strip()]


def test_generator_is_deterministic(make_params, tmp_path):
    params = make_params({"data.synthetic.n_train": 60, "data.synthetic.n_val": 12, "data.synthetic.n_test": 12})
    a = synthetic.generate(params, tmp_path / "a")
    b = synthetic.generate(params, tmp_path / "b")
    assert _digest(a) == _digest(b)
    other = make_params({"data.synthetic.n_train": 60, "data.synthetic.n_val": 12, "data.synthetic.n_test": 12,
                         "data.synthetic.generator_seed": 1})
    assert _digest(synthetic.generate(other, tmp_path / "c")) != _digest(a)


def test_layout_and_label_rule(make_params, tmp_path):
    params = make_params({"data.synthetic.n_train": 900, "data.synthetic.n_val": 12, "data.synthetic.n_test": 12})
    out = synthetic.generate(params, tmp_path / "s")
    rows = _rows(out, "snli_ve_train.jsonl")
    assert len(rows) == 900
    assert len(_rows(out, "snli_ve_dev.jsonl")) == 12 and len(_rows(out, "snli_ve_test.jsonl")) == 12
    for r in rows:
        assert (out / "flickr30k-images" / f"{r['Flickr30K_ID']}.jpg").exists()
        colour, shape = r["sentence1"].split()[-2:]  # the premise holds the truth (never a model input)
        assert synthetic.label_of(colour, shape, r["sentence2"]) == r["gold_label"]
    counts = Counter(r["gold_label"] for r in rows)
    assert all(250 <= counts[label] <= 350 for label in synthetic.LABELS)  # uniform labels
    # text-only ceiling: the best guess from the text alone is right about 2/3 of the time
    has_mod = [any(w in synthetic.MODIFIERS for w in r["sentence2"].split()) for r in rows]
    guess = ["neutral" if m else "entailment" for m in has_mod]
    acc = sum(g == r["gold_label"] for g, r in zip(guess, rows, strict=True)) / len(rows)
    assert 0.6 < acc < 0.73


def test_images_show_the_named_colour(make_params, tmp_path):
    from PIL import Image

    params = make_params({"data.synthetic.n_train": 30, "data.synthetic.n_val": 3, "data.synthetic.n_test": 3})
    out = synthetic.generate(params, tmp_path / "s")
    for r in _rows(out, "snli_ve_train.jsonl")[:10]:
        colour = r["sentence1"].split()[-2]
        pixels = list(Image.open(out / "flickr30k-images" / f"{r['Flickr30K_ID']}.jpg").convert("RGB").getdata())
        target = synthetic.COLOURS[colour]
        near = sum(1 for p in pixels if sum(abs(a - b) for a, b in zip(p, target, strict=True)) < 60)
        assert near > 0.05 * len(pixels), f"{colour} shape not visible in {r['Flickr30K_ID']}"


def test_shared_images(make_params, tmp_path):
    params = make_params({"data.synthetic.n_train": 30, "data.synthetic.n_val": 3, "data.synthetic.n_test": 3,
                          "data.synthetic.hypotheses_per_image": 3})
    out = synthetic.generate(params, tmp_path / "s")
    rows = _rows(out, "snli_ve_train.jsonl")
    assert len({r["Flickr30K_ID"] for r in rows}) == 10


def test_second_run_is_a_no_op(make_params, tmp_path):
    params = make_params({"data.synthetic.n_train": 30, "data.synthetic.n_val": 3, "data.synthetic.n_test": 3})
    out = synthetic.generate(params, tmp_path / "s")
    mtime = (out / "snli_ve_train.jsonl").stat().st_mtime_ns
    synthetic.generate(params, tmp_path / "s")
    assert (out / "snli_ve_train.jsonl").stat().st_mtime_ns == mtime
