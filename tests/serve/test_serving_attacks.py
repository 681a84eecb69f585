"""What a served model reads is untrusted (issue 21): each test is written as the attack, with
the untouched twin in the same request still answered.

The pyfunc model reads image bytes (raw, or base64 as JSON carries them); a path only under the
``image_root`` its owner configured, and a refused path's error does not tell whether the file
exists. Texts are cut before tokenizing, huge images refused from their header, a file name the
file system cannot take is one error row (pyfunc and ``pipeline.predict``)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from mitp.config.params import REPO_ROOT
from mitp.data.manifests import read_split
from mitp.models import inference
from mitp.tracking.pyfunc import MITPPyfunc


def _served(folder: Path, image_root: Path | None = None) -> MITPPyfunc:
    """The pyfunc model as MLflow builds it (load_context with the logged model config)."""
    model = MITPPyfunc()
    model.load_context(SimpleNamespace(artifacts={"model": str(folder)},
                                       model_config={"image_root": str(image_root) if image_root else None}))
    return model


def _predict(model: MITPPyfunc, images: list, texts: list[str] | None = None) -> pd.DataFrame:
    texts = texts or ["a photo of something"] * len(images)
    return model.predict(None, pd.DataFrame({"image": pd.Series(images, dtype=object), "text": texts}))


@pytest.fixture(scope="module")
def test_images(trained_run) -> list[Path]:
    manifest = read_split(trained_run.params.prepared_dir("synthetic"), "test")
    return [manifest.image_path(i) for i in range(4)]


def test_served_model_opens_no_path_by_default(trained_run, test_images, tmp_path):
    """Attack: ``image`` naming a file on the server. Default: no paths at all, and the error for
    an existing file is the error for a missing one. Twin: bytes and base64 rows are answered."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(test_images[0].read_bytes())  # a readable image: the old code scored it
    model = _served(trained_run.folder)
    raw = test_images[1].read_bytes()
    got = _predict(model, [str(secret), str(tmp_path / "nothing.png"), raw, base64.b64encode(raw).decode(),
                           "data:image/png;base64," + base64.b64encode(raw).decode()])
    assert got["label"].iloc[:2].isna().all() and got["label"].iloc[2:].notna().all()
    errors = got["error"].tolist()
    assert errors[0].replace("secret", "X") == errors[1].replace("nothing", "X")
    assert "not accepted" in errors[0]
    assert got["label"].iat[2] == got["label"].iat[3] == got["label"].iat[4]


def test_image_root_confines_paths_and_hides_existence(trained_run, test_images, tmp_path):
    """Attack: ``..``, an absolute path, a link inside the root pointing out, with ``image_root``
    set. Each gets the same error as a missing file. Twin: a file under the root is scored."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.png").write_bytes(test_images[0].read_bytes())
    outside = tmp_path / "outside.png"
    outside.write_bytes(test_images[1].read_bytes())
    (root / "link.png").symlink_to(outside)
    model = _served(trained_run.folder, image_root=root)
    got = _predict(model, ["ok.png", "../outside.png", str(outside), "link.png", "missing.png"])
    assert got["label"].iat[0] is not None and got["error"].iat[0] is None
    errors = got["error"].tolist()[1:]
    assert got["label"].iloc[1:].isna().all()
    assert all(e.endswith("is not a readable file under the image root") for e in errors)
    assert len({e.split(" is not")[0] != "" for e in errors}) == 1


def test_image_root_must_be_a_folder(trained_run, tmp_path):
    with pytest.raises(ValueError, match="image_root"):
        _served(trained_run.folder, image_root=tmp_path / "absent")


def test_name_too_long_for_the_file_system_is_one_error_row(trained_run, test_images, tmp_path):
    """Attack: an image name longer than NAME_MAX (``Path.is_file`` raises OSError). Twin: the
    other rows of the batch are scored."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.png").write_bytes(test_images[0].read_bytes())
    long_name = "a" * 5000 + ".png"
    got = _predict(_served(trained_run.folder, image_root=root), ["ok.png", long_name, "ok.png"])
    assert got["label"].iat[1] is None and "not a readable file" in got["error"].iat[1]
    assert got["label"].iat[0] == got["label"].iat[2] is not None


def test_name_too_long_in_pipeline_predict_is_one_error_row(trained_run, test_images, tmp_path):
    """The same attack through ``pipeline.predict`` (paths relative to the input file)."""
    (tmp_path / "ok.png").write_bytes(test_images[0].read_bytes())
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"image": name, "text": "a text"}) + "\n"
                           for name in ("ok.png", "b" * 5000 + ".png", "ok.png")))
    dst = tmp_path / "out.jsonl"
    p = trained_run.params
    out = subprocess.run([sys.executable, "-m", "pipeline.predict", "--model", str(trained_run.folder), "--input",
                          str(src), "--output", str(dst), "-S", f"data.root={p.data.root}",
                          "-S", f"mlflow.tracking_uri={p.mlflow.tracking_uri}", "-S", f"backbone.dir={p.backbone.dir}"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["error"] is None for r in rows] == [True, False, True]
    assert "not found" in rows[1]["error"] and len(rows[1]["error"]) < 200


def test_failed_rows_are_json_null_never_nan(trained_run, test_images):
    """A failed row's label and probabilities are None (JSON null): strict JSON out."""
    got = _predict(_served(trained_run.folder), [test_images[0].read_bytes(), b"not an image"])
    text = json.dumps(got.to_dict(orient="records"), allow_nan=False)
    rows = json.loads(text)
    assert rows[0]["label"] and rows[0]["error"] is None
    assert rows[1]["label"] is None and all(v is None for k, v in rows[1].items() if k.startswith("prob_"))


_COST = textwrap.dedent("""
    import io, json, resource, sys, time
    from types import SimpleNamespace
    from PIL import Image
    import pandas as pd
    from mitp.tracking.pyfunc import MITPPyfunc

    folder, kind, arg = sys.argv[1:4]
    model = MITPPyfunc()
    model.load_context(SimpleNamespace(artifacts={"model": folder}, model_config={}))
    ok = open(arg, "rb").read() if kind == "text" else None
    if kind == "text":
        rows = {"image": [ok], "text": ["a dog " * (10 * 2**20 // 6)]}
    else:
        rows = {"image": [open(arg, "rb").read()], "text": ["a photo"]}
    small = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(small, format="PNG")
    model.predict(None, pd.DataFrame({"image": [small.getvalue()], "text": ["warm up"]}))  # not the measured row
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    out = model.predict(None, pd.DataFrame(rows))
    seconds = time.perf_counter() - t
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps({"seconds": seconds, "peak_growth_mb": grown, "label": out["label"].iat[0],
                      "error": out["error"].iat[0]}))
""")


def _cost(folder: Path, kind: str, arg: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _COST, str(folder), kind, str(arg)], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    print(kind, out.stdout.strip().splitlines()[-1])  # the cost, shown with -s
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_ten_megabyte_text_is_cut_before_tokenizing(trained_run, test_images):
    """Attack: a 10 MB text (it was tokenized whole: 18 s, 3.4 GB). Now < 2 s, < 200 MB, and the
    row is still answered (only the first max_text_length tokens were ever used)."""
    got = _cost(trained_run.folder, "text", test_images[0])
    assert got["label"] and got["error"] is None
    assert got["peak_growth_mb"] < 200, got  # seconds: printed (run with -s), never asserted


def test_huge_png_is_refused_from_its_header(trained_run, tmp_path):
    """Attack: a small PNG declaring 9400x9400 pixels (it was decoded in full). Refused from the
    header: < 2 s, < 200 MB, one error row naming the size."""
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("1", (9400, 9400)).save(bomb, format="PNG", optimize=True)
    assert bomb.stat().st_size < 2_000_000
    got = _cost(trained_run.folder, "image", bomb)
    assert got["label"] is None and "9400x9400" in got["error"]
    assert got["peak_growth_mb"] < 200, got  # seconds: printed (run with -s), never asserted


def test_text_cut_keeps_what_the_model_reads(trained_run, test_images):
    """Twin of the text bound: a text longer than the cut gives the same tokens, so the same
    probabilities, as the text the old code tokenized whole."""
    model = _served(trained_run.folder)
    raw = test_images[0].read_bytes()
    words = "a photo of a small red dog " * 40
    long = words + "x" * (2 * inference.CHARS_PER_TOKEN * model.tm.card["preprocessing"]["max_text_length"])
    got = _predict(model, [raw, raw], [words, long])
    probs = got[[c for c in got.columns if c.startswith("prob_")]].to_numpy(dtype=float)
    assert probs[0].tolist() == pytest.approx(probs[1].tolist(), abs=1e-6)


def test_base64_string_is_decoded_in_memory(trained_run, test_images):
    """The example payload MLflow logs is a base64 string: decoded, never taken for a path."""
    data = base64.b64encode(test_images[2].read_bytes()).decode()
    assert inference._open_source(data, inference.ImagePolicy(decode_base64=True)).read() == \
        io.BytesIO(test_images[2].read_bytes()).read()


def test_image_at_the_limit_costs_under_the_bounds(trained_run, tmp_path):
    """Twin of the pixel bound: an RGBA PNG of exactly MAX_PIXELS is answered, < 2 s, < 200 MB."""
    from PIL import Image

    img = tmp_path / "limit.png"
    Image.new("RGBA", (4096, inference.MAX_PIXELS // 4096), (10, 200, 30, 255)).save(img, format="PNG")
    got = _cost(trained_run.folder, "image", img)
    assert got["label"] and got["error"] is None
    assert got["peak_growth_mb"] < 200, got  # seconds: printed (run with -s), never asserted


def test_large_jpeg_is_decoded_reduced(trained_run, tmp_path):
    """A 24 MP JPEG (a phone photo) is decoded at a reduced scale and answered, < 2 s, < 200 MB."""
    from PIL import Image

    img = tmp_path / "photo.jpg"
    Image.new("RGB", (6000, 4000), (120, 80, 40)).save(img, format="JPEG", quality=80)
    got = _cost(trained_run.folder, "image", img)
    assert got["label"] and got["error"] is None
    assert got["peak_growth_mb"] < 200, got  # seconds: printed (run with -s), never asserted
