"""The trained model folder: card contents, save -> load round trip, and evaluation from raw
inputs reproducing the training run's test metric."""

from __future__ import annotations

import json

import pytest
import torch

from mitp.data.manifests import manifest_hash
from mitp.models import inference
from mitp.models import trained as trained_model

TRUSTED = inference.ImagePolicy(any_path=True)  # manifest rows, as evaluate reads them


def test_card_describes_the_model(trained_run):
    card = json.loads((trained_run.folder / trained_model.CARD).read_text())
    p = trained_run.params
    assert card["model"]["kind"] == "mitp" and card["model"]["start"] == 1
    assert card["labels"] == json.loads((p.prepared_dir("synthetic") / "labels.json").read_text())
    assert card["task"] == {"type": "single_label", "threshold": None}
    assert card["backbone"]["config"]["preset"] == "tiny-random"
    assert card["backbone"]["recipe"]["tiny_seed"] == 0
    assert card["preprocessing"]["max_text_length"] == p.data.synthetic.max_text_length
    assert card["preprocessing"]["image_mean"] == [0.5, 0.5, 0.5]
    assert card["trained_from"]["source"] == "cache" and card["trained_from"]["layer"] == 1
    assert card["trained_from"]["dtype"] == "float16" and card["trained_from"]["cache_fingerprint"]
    assert card["dataset"]["manifest_sha256"] == manifest_hash(p.prepared_dir("synthetic"))
    assert card["training"]["run_id"] == trained_run.run_id
    assert card["training"]["metrics"]["test_accuracy"] == pytest.approx(trained_run.metrics["test_accuracy"])
    # packed backbones travel inside the folder, no machine path in the card
    assert (trained_run.folder / card["backbone"]["packed"] / "vision" / "config.json").is_file()
    assert str(trained_run.params.resolve("x").parent) not in json.dumps(card)


def test_round_trip_gives_the_same_logits(trained_run, tmp_path):
    tm = trained_model.load(trained_run.folder)
    copy = tmp_path / "copy"
    state = {n: p.detach().clone() for n, p in tm.model.named_parameters() if p.requires_grad}
    trained_model.save(copy, state, tm.card, trained_run.params)
    again = trained_model.load(copy)
    rows = [(str(tm.folder.parent), "x")]  # not an image: a per-row error, not a crash
    manifest_rows = _first_rows(trained_run.params, 8)
    a, la = inference.predict_rows(tm, manifest_rows, progress=False, policy=TRUSTED)
    b, lb = inference.predict_rows(again, manifest_rows, progress=False, policy=TRUSTED)
    assert torch.equal(la, lb) and la.shape == (8, len(tm.labels))
    assert [p.label for p in a] == [p.label for p in b]
    bad, _ = inference.predict_rows(tm, rows, progress=False, policy=TRUSTED)
    assert bad[0].error and bad[0].probabilities is None


def test_folder_without_card_is_a_clear_error(tmp_path):
    with pytest.raises(trained_model.ModelFolderError, match="model_card.json"):
        trained_model.load_uri(str(tmp_path))


def test_evaluate_from_raw_inputs_reproduces_the_logged_metric(trained_run):
    tm = trained_model.load(trained_run.folder)
    result, preds, _ = inference.evaluate_split(tm, trained_run.params.prepared_dir("synthetic"), "test",
                                               progress=False)
    assert abs(result["test_accuracy"] - trained_run.metrics["test_accuracy"]) <= 1e-3
    assert len(preds) == trained_run.params.data.synthetic.n_test


def _first_rows(params, n):
    from mitp.data.manifests import read_split

    m = read_split(params.prepared_dir("synthetic"), "test")
    return [(str(m.image_path(i)), m.frame["text"].iat[i]) for i in range(n)]


def test_multi_label_decision_uses_the_card_threshold():
    from pathlib import Path

    from mitp.tracking.pyfunc import prediction_record

    card = {"labels": ["drama", "comedy", "horror"], "task": {"type": "multi_label", "threshold": 0.5}}
    tm = trained_model.TrainedModel(model=None, backbones=None, card=card, folder=Path("."), device=torch.device("cpu"))
    probs = inference.probabilities(tm, torch.tensor([[2.0, 0.0, -3.0]]))  # sigmoid: 0.88, 0.5, 0.05
    pred = inference.decide(tm, probs[0].tolist())
    assert pred.labels == ["drama", "comedy"] and pred.label is None
    record = prediction_record(tm.labels, pred)
    assert record["label"] == "drama|comedy" and record["error"] is None
    assert record["prob_horror"] == pytest.approx(torch.sigmoid(torch.tensor(-3.0)).item())


def test_loading_and_predicting_change_no_byte_of_the_folder(trained_run, tmp_path):
    """A DVC-tracked model folder stays unmodified by predict: the packed backbones carry their
    spec, so loading reads them instead of rebuilding the tiny-random pair into the folder."""
    import hashlib
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(trained_run.folder, folder)

    def snapshot():
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    before = snapshot()
    tm = trained_model.load(folder)
    inference.predict_rows(tm, _first_rows(trained_run.params, 4), progress=False, policy=TRUSTED)
    assert snapshot() == before


def test_rows_sharing_an_image_reuse_its_pixels_and_give_the_same_logits(trained_run, monkeypatch):
    """evaluate reads SNLI-VE's ~18 hypotheses per image one after another: with ``reuse_repeated``
    each image is decoded once, and the logits are those of decoding it every time."""
    tm = trained_model.load(trained_run.folder)
    first = _first_rows(trained_run.params, 3)
    rows = [(first[0][0], t) for t in ("a red circle", "a blue square", "a shiny green triangle")] + first[1:]
    plain, la = inference.predict_rows(tm, rows, progress=False, policy=TRUSTED)
    calls = []
    real = inference.pixel_values
    monkeypatch.setattr(inference, "pixel_values", lambda *a, **k: calls.append(1) or real(*a, **k))
    reused, lb = inference.predict_rows(tm, rows, progress=False, policy=TRUSTED, reuse_repeated=True)
    assert torch.equal(la, lb) and [p.label for p in plain] == [p.label for p in reused]
    assert len(calls) == 1 + len({r[0] for r in first[1:]} - {first[0][0]})
