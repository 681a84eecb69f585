"""Training cost per model kind at the paper setting: trainable parameters, peak memory and time
of a training step, each kind in a fresh process.

    python benchmarks/cost.py [--smoke] [--batch-size B] [--steps N] [--threads T] [--device D]

Setting: ViT-B/16 + BERT-base shapes with random weights built from the configs shipped in
``mitp/models/backbone_configs`` (no download; cost does not depend on the weights), 224 x 224 images,
texts of 64 tokens (no padding: every step pays for the full length), Food101's 101 classes,
the same batch for every kind, AdamW on what trains (``mitp.training.steps.make_optimizer``). Rows:

* ``finetune``, raw inputs: both towers train end to end (``train.backbone_lr``);
* ``pmf``, raw inputs: PMF's defaults (the top 2 layers fused);
* ``mitp``, raw inputs, the paper's setting: M = 8, h = 384, interaction start s = 8;
* ``mitp``, from the feature cache at layer k = 8: the model is built without the embeddings
  and layers 0-7 (``drop_below``), which are never materialised;
* ``late_fusion``, from the same cache at layer 8 (the frozen linear probe);
* ``pmf``, from the cache at layer 10 (its first fusion layer).

Batches are random tensors of the right shapes (pixels, token ids, or hidden states entering
k), so the figures are the model's alone, no data loading. Peak memory: the child process's
peak RSS (``getrusage``) on CPU, which includes the Python/torch runtime of every row alike;
``torch.cuda.max_memory_allocated`` on CUDA. Step time: mean of the timed steps after warm-up.
The last output line is one JSON object ``{"device": ..., "rows": [...]}``. ``--smoke`` uses
the tiny-random shapes (a few seconds a row).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ROWS = [("finetune", "raw"), ("pmf", "raw"), ("mitp", "raw"), ("mitp", "cache"), ("late_fusion", "cache"),
        ("pmf", "cache")]
SETTINGS = {
    # k: the cache layer (and MITP's start s); text: tokens per text; hub: MITP's hub size h
    "paper": dict(image=224, text=64, classes=101, k=8, hub=384, batch=8, steps=3, warmup=1),
    "smoke": dict(image=32, text=16, classes=101, k=2, hub=64, batch=4, steps=2, warmup=1),
}


# --------------------------------------------------------------------------------------------
# worker: one row, in its own process
# --------------------------------------------------------------------------------------------


def tower_configs(smoke: bool):
    from transformers import AutoConfig, BertConfig, ViTConfig

    from mitp.models import backbones as bb

    if smoke:
        text = {k: v for k, v in bb.TINY.items() if k not in ("image_size", "patch_size")}
        return ViTConfig(**bb.TINY), BertConfig(vocab_size=len(bb.tiny_vocab()), **text)
    shipped = bb.SHIPPED_CONFIGS
    return (AutoConfig.for_model(**json.loads(shipped["google/vit-base-patch16-224-in21k"].read_text())),
            AutoConfig.for_model(**json.loads(shipped["bert-base-uncased"].read_text())))


def random_init_(tower) -> None:
    """Random weights for a tower materialised from the meta device: N(0, 0.02) matrices and
    embeddings, unit norms, zero biases; BERT's position/token-type id buffers restored."""
    import torch

    with torch.no_grad():
        for name, p in tower.named_parameters():
            if p.ndim == 1:
                p.fill_(0.0 if name.endswith("bias") else 1.0)
            else:
                p.normal_(0.0, 0.02)
        for name, b in tower.named_buffers():
            if name.endswith("position_ids"):
                b.copy_(torch.arange(b.shape[-1], device=b.device).expand_as(b))
            elif name.endswith("token_type_ids"):
                b.zero_()


def run_worker(cfg: dict) -> dict:
    import torch
    from transformers import BertModel, ViTModel

    from mitp.config.params import load_params
    from mitp.models.kinds import build_model
    from mitp.training.runtime import pick_device
    from mitp.training.steps import autocast, make_optimizer

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    s, kind, path = cfg["setting"], cfg["kind"], cfg["path"]
    vcfg, tcfg = tower_configs(cfg["smoke"])
    params = load_params(overrides={"model.kind": kind, "model.interaction.start": s["k"], "model.hub_size": s["hub"],
                                    "train.device": cfg["device"], "sweep.space": {}})
    # the cache layer: k, or PMF's first fusion layer (depth - 2), the highest it can start from
    depth = min(vcfg.num_hidden_layers, tcfg.num_hidden_layers)
    k = params.model.first_interaction_layer(depth) if kind == "pmf" else s["k"]
    device = pick_device(params.train.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.device("meta"):  # shapes only: what the model keeps is materialised below
        vision, text = ViTModel(vcfg, add_pooling_layer=False), BertModel(tcfg, add_pooling_layer=False)
    torch.manual_seed(0)
    model = build_model(params, vision, text, s["classes"], False, drop_below=k if path == "cache" else None)
    for tower in (model.vision, model.text):
        tower.to_empty(device=device)
        random_init_(tower)
    model.to(device).train()
    total = s["warmup"] + s["steps"]
    optimizer, scheduler = make_optimizer(model, params.train, total)

    g = torch.Generator(device="cpu").manual_seed(0)
    B, n_t = s["batch"], s["text"]
    batch = {"attention_mask": torch.ones(B, n_t, dtype=torch.long),
             "labels": torch.randint(0, s["classes"], (B,), generator=g)}
    if path == "raw":
        batch["pixel_values"] = torch.randn(B, 3, s["image"], s["image"], generator=g)
        batch["input_ids"] = torch.randint(5, tcfg.vocab_size, (B, n_t), generator=g)  # past the specials
    else:
        n_v = (s["image"] // vcfg.patch_size) ** 2 + 1
        batch["hidden_v"] = torch.randn(B, n_v, vcfg.hidden_size, generator=g).half()  # the cache's dtype
        batch["hidden_t"] = torch.randn(B, n_t, tcfg.hidden_size, generator=g).half()
        batch["start_layer"] = k
    batch = {key: v.to(device) if torch.is_tensor(v) else v for key, v in batch.items()}

    times = []
    for step in range(total):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with autocast(device):
            loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), params.train.grad_clip)
        optimizer.step()
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= s["warmup"]:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20  # Linux ru_maxrss: KiB
    return {"kind": kind, "path": path, "start_layer": k if path == "cache" else 0,
            "trainable_params": sum(p.numel() for p in model.trainable_parameters()),
            "materialised_params": sum(p.numel() for p in model.parameters()),
            "peak_memory_mb": round(peak, 1), "step_s": round(sum(times) / len(times), 4),
            "loss": round(loss.item(), 4), "device": str(device)}


# --------------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------------


def spawn(cfg: dict, scratch: Path) -> dict:
    """One row in a fresh Python process; it writes its row as JSON to a file."""
    out = scratch / f"{cfg['kind']}-{cfg['path']}.json"
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg), "--out", str(out)],
                          cwd=REPO, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0 or not out.exists():
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"the {cfg['kind']} ({cfg['path']}) row failed (exit {proc.returncode})")
    return json.loads(out.read_text())


def table(rows: list[dict]) -> str:
    ref = next((r for r in rows if r["kind"] == "finetune"), rows[0])
    header = ["kind", "input", "trainable params", "materialised params", "peak memory (MB)",
              "vs finetune", "step (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        where = "raw" if r["path"] == "raw" else f"cache (k={r['start_layer']})"
        lines.append(f"| {r['kind']} | {where} | {r['trainable_params']:,} | {r['materialised_params']:,} | "
                     f"{r['peak_memory_mb']:,.0f} | {r['peak_memory_mb'] / ref['peak_memory_mb']:.2f} | "
                     f"{r['step_s']:.3f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny-random shapes, a few seconds a row")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 8 (paper setting), 4 (smoke)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per row (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads in each row's process")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    return ap


def main() -> int:
    args = build_parser().parse_args()
    if args.worker:
        Path(args.out).write_text(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    setting = dict(SETTINGS["smoke" if args.smoke else "paper"])
    if args.batch_size:
        setting["batch"] = args.batch_size
    if args.steps:
        setting["steps"] = args.steps
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for kind, path in ROWS:
            cfg = {"kind": kind, "path": path, "setting": setting, "smoke": args.smoke, "threads": args.threads,
                   "device": args.device}
            rows.append(spawn(cfg, Path(scratch)))
            r = rows[-1]
            print(f"{kind} ({path}): {r['peak_memory_mb']:,.0f} MB peak, {r['step_s']:.3f} s/step", file=sys.stderr)
    shape = "tiny-random" if args.smoke else "ViT-B/16 + BERT-base (random weights)"
    print(f"{shape}, batch {setting['batch']}, {setting['image']}px images, {setting['text']}-token texts, "
          f"{setting['classes']} classes, device {rows[0]['device']}, threads {args.threads or 'default'}\n")
    print(table(rows))
    print(json.dumps({"device": rows[0]["device"], "batch": setting["batch"], "text_tokens": setting["text"],
                      "rows": [{k: r[k] for k in ("kind", "path", "start_layer", "trainable_params",
                                                  "materialised_params", "peak_memory_mb", "step_s")}
                               for r in rows]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
