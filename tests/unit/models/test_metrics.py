import torch

from mitp.models import metrics


def test_accuracy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    assert abs(metrics.single_label(logits, torch.tensor([0, 1, 1]))["accuracy"] - 2 / 3) < 1e-6


def test_multi_label_f1_against_hand_counts():
    # class 0: tp=1 fp=1 fn=0 -> f1 2/3; class 1: tp=1 fp=0 fn=1 -> 2/3; class 2: none -> 0
    logits = torch.tensor([[5.0, 5.0, -5.0], [5.0, -5.0, -5.0]])
    gold = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    m = metrics.multi_label(logits, gold)
    assert abs(m["f1_micro"] - 2 * 2 / (2 * 2 + 1 + 1)) < 1e-6
    assert abs(m["f1_macro"] - (2 / 3 + 2 / 3 + 0) / 3) < 1e-6
    assert abs(m["f1_weighted"] - (2 / 3 * 1 + 2 / 3 * 2) / 3) < 1e-6
    assert abs(m["f1_samples"] - (1.0 + 0.0) / 2) < 1e-6
