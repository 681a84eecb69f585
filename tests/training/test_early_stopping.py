"""Early stopping on the validation metric (``train.patience``): the run ends once ``patience``
epochs pass without a better score, keeps its best epoch, and a resumed run that had already
stopped trains no further."""

from __future__ import annotations

import pytest

from mitp.training.fit import fit
from mitp.training.steps import stops_early
from tests.factories import SMALL_SYNTHETIC


@pytest.mark.parametrize(("done", "best", "patience", "stop"), [
    (3, 1, 2, True), (2, 1, 2, False), (5, 5, 1, False), (30, 1, None, False), (0, 0, 1, False)])
def test_stop_rule(done, best, patience, stop):
    assert stops_early(done, best, patience) is stop


def test_a_run_that_stops_improving_ends_and_stays_ended(synthetic_prepared, make_params, tmp_path):
    # lr so small the weights never move: the val metric of epoch 1 is never beaten
    run = {**SMALL_SYNTHETIC, "cache.enabled": False, "train.epochs": 8, "train.lr": 1e-12}
    params = make_params({**run, "train.patience": 2})
    ckpt = tmp_path / "ckpt"
    seen = []
    result = fit(params, "synthetic", checkpoint_dir=ckpt, on_epoch=lambda e, row, d: seen.append(e))
    assert seen == [1, 2, 3]
    assert result.best_epoch == 1 and len(result.history) == 3
    assert result.metrics["epochs_run"] == 3 and result.metrics["epochs"] == 8
    assert result.metrics["val_accuracy"] == result.history[0]["val_accuracy"]

    again = []  # the checkpoint says it stopped: resuming trains no epoch
    resumed = fit(params, "synthetic", checkpoint_dir=ckpt, on_epoch=lambda e, row, d: again.append(e))
    assert again == [] and resumed.best_epoch == 1 and len(resumed.history) == 3
    assert resumed.metrics["test_accuracy"] == result.metrics["test_accuracy"]

    rest = []  # without early stopping the same run goes on to the last epoch
    fit(make_params({**run, "train.patience": None}), "synthetic", checkpoint_dir=ckpt, on_epoch=lambda e, row, d: rest.append(e))
    assert rest == [4, 5, 6, 7, 8]
