"""Training speed of the demo ``mitp`` model: the eager step against the optimized one, side by
side in one process, on the same batches and the same initial weights, on one CPU thread.

    python benchmarks/train_speed.py            # full: 60 timed steps per path, interleaved rounds
    python benchmarks/train_speed.py --smoke    # a few steps, for tests (timings meaningless)

The model is the demo's (tiny-random ViT + BERT, M = 8, h = 64, s = 0, batch 64) started from
the feature cache at layer 0, fed synthetic hidden states of the cached shapes. Dropout is 0 so
the two paths compute the same function and their logits can be compared after training.

* eager: plain forward/backward, a per-parameter AdamW loop, ``loss.item()`` every step, and
  every row of the last layer computed (the model as it ran before ``layer_rows``);
* fast: the path ``mitp.training.fit.fit`` takes with ``train.compile: true``: ``torch.compile``
  forward/backward with eager fallback (``mitp.training.compiled.StepRunner``), foreach AdamW and
  clipping, the loss summed on the device and read once, and the last layer computing only the
  rows the readout reads (CLS and the prompts);
* fast_eager: the same without compiling (what ``train.compile: auto`` runs on CPU).

Timed rounds alternate eager and fast so a machine shared with other work loads both alike.
Start-up: ``python -m pipeline.train`` on a tiny prepared synthetic set in a temp folder, from
process launch to its first training step (``mitp.training.fit`` logs ``first training step at <unix
time>``). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mitp.config.params import load_params  # noqa: E402
from mitp.data.prepare import prepare_dataset  # noqa: E402
from mitp.data.synthetic import generate  # noqa: E402
from mitp.models.backbones import ensure_local, tiny_config_models  # noqa: E402
from mitp.models.mitp import MITP, MITPConfig  # noqa: E402
from mitp.training.compiled import StepRunner, wants_compile  # noqa: E402

BATCH, N_V, WIDTH = 64, 17, 64  # tiny-random: 32 px / 8 px patches + CLS


def demo_model() -> MITP:
    torch.manual_seed(0)
    vision, text = tiny_config_models()
    return MITP(MITPConfig(kind="mitp", prompt_length=8, hub_size=64, start=0, num_labels=3, dropout=0.0),
                vision, text)


def batches(n: int) -> list[dict]:
    """``n`` batches shaped like the cache's layer-0 states: (B, N_v, d), (B, n, d) with texts of
    5-9 tokens as in the demo set, each batch padded to its longest (as the cache reader does)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        lengths = torch.randint(5, 10, (BATCH,), generator=g)
        n_t = int(lengths.max())
        mask = (torch.arange(n_t)[None, :] < lengths[:, None]).long()
        out.append({"hidden_v": torch.randn(BATCH, N_V, WIDTH, generator=g),
                    "hidden_t": torch.randn(BATCH, n_t, WIDTH, generator=g), "attention_mask": mask,
                    "labels": torch.randint(0, 3, (BATCH,), generator=g)})
    return out


def forward_loss(module, batch):
    return module(**batch, start_layer=0).loss


def every_row_of_the_last_layer(model: MITP) -> MITP:
    """The model as it ran before: the last layer computes every row, then the readout picks its own."""
    for tower in (model.vision, model.text):
        tower.layer_rows = lambda i, x, rows, mask=None, tower=tower: tower.layer(i, x, mask)[:, rows]
    return model


class EagerPath:
    """The step as the training loop ran it before: a host sync per step, a per-parameter AdamW
    loop, every row of the last layer computed."""

    def __init__(self, model: MITP):
        self.model = every_row_of_the_last_layer(model).train()
        self.opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, foreach=False)
        self.loss_sum = 0.0

    def step(self, batch) -> None:
        loss = forward_loss(self.model, batch)
        if not torch.isfinite(loss):
            raise RuntimeError("diverged")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.trainable_parameters(), 1.0, foreach=False)
        self.opt.step()
        self.loss_sum += loss.item() * BATCH

    def sync(self) -> float:
        return self.loss_sum


class FastPath:
    """The step ``mitp.training.fit.fit`` runs."""

    def __init__(self, model: MITP, compile_setting: str):
        self.model = model.train()
        self.opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, foreach=True)
        self.runner = StepRunner(model, wants_compile(compile_setting, torch.device("cpu")))
        self.loss_sum = torch.zeros(())

    def step(self, batch) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = self.runner(forward_loss, batch)
        torch.nn.utils.clip_grad_norm_(self.model.trainable_parameters(), 1.0, foreach=True)
        self.opt.step()
        self.loss_sum += loss.detach() * BATCH

    def sync(self) -> float:
        return float(self.loss_sum)


def timed(path, data: list[dict]) -> float:
    """Seconds for one pass over ``data`` (ends with the host sync the path needs)."""
    t0 = time.perf_counter()
    for b in data:
        path.step(b)
    path.sync()
    return time.perf_counter() - t0


@torch.no_grad()
def logits(model: MITP, data: list[dict]) -> torch.Tensor:
    model.eval()
    out = torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}, start_layer=0).logits for b in data])
    model.train()
    return out


def startup_seconds(timeout: float) -> float:
    """Process launch -> first training step of ``python -m pipeline.train`` on a tiny synthetic set."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sets = {"data.root": str(root / "data"), "data.locks_dir": str(root / "locks"),
                "backbone.dir": str(root / "backbones"), "cache.dir": str(root / "features"),
                "train.checkpoint_dir": str(root / "runs"), "mlflow.tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
                "data.synthetic.n_train": 64, "data.synthetic.n_val": 32, "data.synthetic.n_test": 32,
                "train.epochs": 1, "train.max_steps_per_epoch": 1, "cache.enabled": False, "train.compile": False}
        # the data and the backbones exist before the timed process starts (not start-up cost)
        params = load_params(overrides=sets)
        generate(params)
        prepare_dataset(params, "synthetic")
        ensure_local(params.backbone)
        flags = [x for k, v in sets.items() for x in ("-S", f"{k}={json.dumps(v) if isinstance(v, bool) else v}")]
        env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        run = dict(cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        launched = time.time()
        proc = subprocess.run([sys.executable, "-m", "pipeline.train", "--dataset", "synthetic",
                               "--metrics-out", str(root / "m.json"), "--history-out", str(root / "h.json"),
                               *flags], **run)
        found = re.search(r"first training step at ([0-9.]+)", proc.stderr)
        if proc.returncode or not found:
            raise RuntimeError(f"train failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        return float(found.group(1)) - launched


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a few steps: checks the machinery, not the speed")
    ap.add_argument("--steps", type=int, default=60, help="timed steps per path (split in rounds)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", default="true", help="the fast path's train.compile: auto | true | false")
    ap.add_argument("--no-startup", action="store_true", help="skip the start-up measurement")
    return ap


def main() -> int:
    args = build_parser().parse_args()
    torch.set_num_threads(1)
    steps, rounds, warmup = (4, 1, 2) if args.smoke else (args.steps, args.rounds, 5)

    base = demo_model()
    eager, fast = EagerPath(copy.deepcopy(base)), FastPath(copy.deepcopy(base), args.compile)
    fast_eager = FastPath(copy.deepcopy(base), "false")
    data = batches(max(1, steps // rounds))
    t0 = time.perf_counter()
    for b in batches(warmup):  # compiles the fast path; warms the allocator for both
        fast.step(b)
        eager.step(b)
        fast_eager.step(b)
    warmup_s = time.perf_counter() - t0
    eager_s = fast_s = fast_eager_s = 0.0
    for _ in range(rounds):  # interleaved, so all paths see the same machine load
        eager_s += timed(eager, data)
        fast_s += timed(fast, data)
        fast_eager_s += timed(fast_eager, data)
    n = rounds * len(data) * BATCH
    # after the same updates on the same batches (compiled forward and backward on one side),
    # both models give the same logits
    ref = logits(eager.model, data)
    diff = max(float((ref - logits(m, data)).abs().max()) for m in (fast.model, fast_eager.model))
    result = {
        "eager_samples_per_s": n / eager_s, "fast_samples_per_s": n / fast_s, "speedup": eager_s / fast_s,
        "eager_ms_per_step": 1000 * eager_s / (n / BATCH), "fast_ms_per_step": 1000 * fast_s / (n / BATCH),
        "fast_eager_samples_per_s": n / fast_eager_s, "fast_eager_speedup": eager_s / fast_eager_s,
        "max_abs_logit_diff": diff, "compiled": fast.runner.active, "warmup_s": warmup_s,
        "timed_steps_per_path": n // BATCH, "threads": torch.get_num_threads(), "smoke": args.smoke,
        "load_average_1m": os.getloadavg()[0],
    }
    print(json.dumps(result), flush=True)  # the timings, before the start-up run (which can fail alone)
    result["startup_to_first_step_s"] = None if args.no_startup else startup_seconds(600)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
