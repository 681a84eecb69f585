"""Training throughput from raw images/text vs from the feature cache, side by side in one run.

    python benchmarks/cache_speedup.py [--smoke] [--preset vit-base|tiny-random] [--start N]
                                       [--steps N] [--warmup N] [--batch-size B] [--threads T]
                                       [--repeats R] [-S key=value ...]

Both paths train the same model (same initial weights, same optimizer, the training step of
``mitp.training.fit.fit``, :func:`mitp.training.steps.train_step`) on the same synthetic data for the same number of steps:

(a) raw: every step decodes the images, runs the image processor and the tokenizer (the
    DataLoader of ``cache.enabled: false``) and the full frozen stack from the embeddings;
(b) cache: every step gathers hidden states entering layer k from the memory-mapped cache
    (built first, its cost reported separately) and starts the model at k = start.

Each path runs in its own process, so its peak memory during the training steps is its own (CUDA
max allocated, or peak RSS on CPU); steps after a short warm-up are timed, data loading
included. With ``--repeats R`` the two paths alternate R times and the fastest run of each
counts (other load on the machine only ever slows a run down). Printed: throughput of
both, the measured ratio, the ratio a FLOP count predicts (``mitp.models.flops``: layers skipped,
forward vs backward) and the fraction of that ceiling reached. ``vit-base`` builds ViT-B/16 and
BERT-base with random weights from the configs shipped in ``mitp/models/backbone_configs`` (no
download; timing does not depend on the weights); ``tiny-random`` uses the project's tiny pair.
The backbones can also be named as ``params.yaml`` spells them, ``-S backbone.preset=vit-base+bert-base``
(= ``--preset vit-base``) or ``-S backbone.preset=tiny-random``; no other ``backbone.*`` key applies
(the benchmark builds its own backbones).
The last output line is one JSON object (``measured_speedup``, ``predicted_speedup``, ``start``,
``preset``, ...). ``--smoke`` (tiny-random, a few steps) takes well under a minute and runs the
same code as the full run, the JSON line included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PRESETS = {
    # name: (default start, image size, max text length, default steps, warm-up, batch)
    "vit-base": dict(start=8, image_size=224, max_text_length=40, steps=8, warmup=2, batch=16),
    "tiny-random": dict(start=2, image_size=32, max_text_length=16, steps=40, warmup=5, batch=32),
}
SMOKE = dict(steps=6, warmup=2, batch=16)
# `-S backbone.preset=...` as params.yaml spells it -> the preset of this benchmark
PARAMS_PRESETS = {"vit-base+bert-base": "vit-base", "tiny-random": "tiny-random"}
VIT_BASE = "google/vit-base-patch16-224-in21k"
BERT_BASE = "bert-base-uncased"


# --------------------------------------------------------------------------------------------
# shared by the parent and the two workers
# --------------------------------------------------------------------------------------------


def make_params(cfg: dict):
    from mitp.config.params import load_params

    work = Path(cfg["workdir"])
    preset = PRESETS[cfg["preset"]]
    n_train = (cfg["steps"] + cfg["warmup"]) * cfg["batch"]
    overrides = {
        "data.root": str(work / "data"), "data.locks_dir": str(work / "locks"),
        "cache.dir": str(work / "features"), "train.checkpoint_dir": str(work / "runs"),
        "backbone.dir": str(work / "backbones"), "mlflow.tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "data.synthetic.n_train": n_train, "data.synthetic.n_val": 3, "data.synthetic.n_test": 3,
        "data.synthetic.image_size": preset["image_size"],
        "data.synthetic.max_text_length": preset["max_text_length"],
        "model.interaction.start": cfg["start"], "cache.layer": cfg["start"],
        "train.batch_size": cfg["batch"], "train.epochs": 1,
        "sweep.space": {},  # no sweep here: params.yaml's demo space must not constrain cache.layer
    }
    if cfg["preset"] == "vit-base":
        overrides.update({"backbone.preset": "custom", "backbone.vision": f"random-init:{VIT_BASE}:seed{cfg['seed']}",
                          "backbone.text": f"random-init:{BERT_BASE}:seed{cfg['seed']}"})
    overrides.update(cfg["overrides"])
    return load_params(overrides=overrides)


def make_backbones(params, cfg: dict, device):
    """tiny-random through the project's loader; ViT-B/16 + BERT-base shapes with random weights."""
    import torch

    from mitp.models import backbones as bb_mod

    if cfg["preset"] == "tiny-random":
        return bb_mod.load(params.backbone, device)
    from transformers import AutoConfig, BertModel, BertTokenizer, ViTImageProcessorPil, ViTModel

    vcfg = AutoConfig.for_model(**json.loads(bb_mod.SHIPPED_CONFIGS[VIT_BASE].read_text()))
    tcfg = AutoConfig.for_model(**json.loads(bb_mod.SHIPPED_CONFIGS[BERT_BASE].read_text()))
    torch.manual_seed(cfg["seed"])
    vision = ViTModel(vcfg, add_pooling_layer=False)
    text = BertModel(tcfg, add_pooling_layer=False)
    for m in (vision, text):
        bb_mod.freeze(m)
        m.to(device)
    processor = ViTImageProcessorPil(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    vocab = bb_mod.tiny_vocab()  # bert-base-uncased's vocab is not shipped; any WordPiece vocab times the same
    tokenizer = BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab)}, do_lower_case=True)
    return bb_mod.Backbones(vision, text, processor, tokenizer, bb_mod.spec_from_config(params.backbone))


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# worker: one path, in its own process
# --------------------------------------------------------------------------------------------


def run_worker(path: str, cfg: dict) -> dict:
    import torch

    from mitp.training.loaders import raw_loaders
    from mitp.training.memory import peak_memory_mb, reset_peak_memory
    from mitp.training.runtime import pick_device
    from mitp.training.steps import build_model, make_optimizer, seed_everything, to_device, train_step

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    params = make_params(cfg)
    device = pick_device(params.train.device)
    bb = make_backbones(params, cfg, device)
    if path == "raw":
        loaders = raw_loaders(params, "synthetic", bb, device)
    else:
        from mitp.training.loaders import cached_loaders

        loaders = cached_loaders(params, "synthetic", bb, device)
    seed_everything(params.seed)
    model = build_model(params, bb, len(loaders.labels), loaders.multi_label).to(device)
    total = cfg["warmup"] + cfg["steps"]
    optimizer, scheduler = make_optimizer(model, params.train, total)
    model.train()
    it = iter(loaders.train)
    memory_before = reset_peak_memory(device)
    data_s, losses, text_tokens, t0 = 0.0, [], [], 0.0
    for step in range(total):
        if step == cfg["warmup"]:
            sync(device)
            t0, data_s = time.perf_counter(), 0.0
        td = time.perf_counter()
        batch = next(it)  # the loader's work: decode + processor + tokenizer, or the memmap gather
        batch = to_device(batch, device)
        data_s += time.perf_counter() - td
        text_tokens.append(batch["attention_mask"].shape[1])
        # the step's loss stays a tensor on the device (no host sync inside the timed loop)
        losses.append(train_step(model, batch, optimizer, scheduler, start_layer=loaders.start_layer,
                                 grad_clip=params.train.grad_clip, device=device))
    sync(device)
    seconds = time.perf_counter() - t0
    steps = cfg["steps"]
    return {"path": path, "steps": steps, "seconds": seconds, "steps_per_s": steps / seconds,
            "samples_per_s": steps * cfg["batch"] / seconds, "data_seconds": data_s,
            "peak_memory_mb": peak_memory_mb(device), "memory_before_mb": memory_before, "start_layer": loaders.start_layer,
            "mean_text_tokens": sum(text_tokens) / len(text_tokens), "loss_first": float(losses[0]),
            "loss_last": float(losses[-1]), "device": str(device), "torch_threads": torch.get_num_threads()}


# --------------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------------


def predicted(params, bb, start: int, mean_text: float, num_labels: int) -> dict:
    from mitp.config.params import MODEL_KINDS
    from mitp.models.flops import Tower, step_flops, vit_tower

    v, t = bb.vision.config, bb.text.config
    vision = vit_tower(v.num_hidden_layers, v.hidden_size, v.intermediate_size, v.image_size, v.patch_size)
    text = Tower(t.num_hidden_layers, t.hidden_size, t.intermediate_size, round(mean_text))
    m = params.model
    return step_flops(vision, text, start=m.interaction.start, interval=m.interaction.interval,
                      cache_layer=start, prompt_length=m.prompt_length, hub_size=m.hub_size,
                      num_labels=num_labels, prompted=MODEL_KINDS[m.kind] == "interaction")


def spawn(path: str, cfg: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", path, "--config", json.dumps(cfg)]
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"the {path} worker failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a quick run (tiny-random unless --preset, few steps)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None, help="default: vit-base (tiny-random with --smoke)")
    ap.add_argument("--start", type=int, default=None, help="first interaction layer s = cache layer k")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per path")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None,
                    help="run each path this many times, alternating, and keep the fastest of each (default 2; 1 with --smoke)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads in both paths (default: torch's choice; 1 for tiny-random, "
                         "whose tiny matmuls are overhead-bound)")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="params override, e.g. -S model.prompt_length=16 -S train.device=cuda -S train.num_workers=8")
    ap.add_argument("--workdir", default=None, help="where data and cache go (default: a temp folder, removed after)")
    ap.add_argument("--worker", choices=["raw", "cache"], help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    return ap


def resolve_preset(args: argparse.Namespace, overrides: dict) -> str:
    """The benchmark's preset from ``--preset`` or ``-S backbone.preset`` (removed from
    ``overrides``); they must agree, and no other ``backbone.*`` override is taken."""
    chosen = {args.preset} if args.preset else set()
    if "backbone.preset" in overrides:
        value = overrides.pop("backbone.preset")
        if value not in PARAMS_PRESETS:
            raise SystemExit(f"-S backbone.preset={value}: this benchmark builds its own backbones, one of "
                             f"{', '.join(PARAMS_PRESETS)} (or --preset {'|'.join(sorted(PRESETS))})")
        chosen.add(PARAMS_PRESETS[value])
    if others := sorted(k for k in overrides if k.startswith("backbone.")):
        raise SystemExit(f"-S {others[0]}: this benchmark builds its own backbones; choose them with --preset")
    if len(chosen) > 1:
        raise SystemExit(f"--preset and -S backbone.preset disagree ({' vs '.join(sorted(chosen))})")
    return chosen.pop() if chosen else ("tiny-random" if args.smoke else "vit-base")


def main() -> int:
    args = build_parser().parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.worker:
        print(json.dumps(run_worker(args.worker, json.loads(args.config))))
        return 0

    from mitp.config.params import parse_override

    overrides = dict(parse_override(o) for o in args.overrides)
    preset_name = resolve_preset(args, overrides)
    preset = PRESETS[preset_name]
    size = SMOKE if args.smoke else preset
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cache_speedup-"))
    cfg = {"preset": preset_name, "workdir": str(workdir), "seed": args.seed,
           "start": preset["start"] if args.start is None else args.start,
           "steps": args.steps or size["steps"], "warmup": size["warmup"] if args.warmup is None else args.warmup,
           "batch": args.batch_size or size["batch"],
           "threads": args.threads or (1 if preset_name == "tiny-random" else None), "overrides": overrides}
    try:
        return run_parent(cfg, args.repeats or (1 if args.smoke else 2))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def run_parent(cfg: dict, repeats: int) -> int:
    import torch

    from mitp.cache import build_cache
    from mitp.data.prepare import prepare_dataset
    from mitp.data.synthetic import generate
    from mitp.training.runtime import pick_device

    t_all = time.perf_counter()
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    params = make_params(cfg)
    device = pick_device(params.train.device)
    generate(params)
    prepare_dataset(params, "synthetic")
    bb = make_backbones(params, cfg, device)
    depth = min(bb.vision.config.num_hidden_layers, bb.text.config.num_hidden_layers)
    summary = build_cache(params, "synthetic", bb, device, progress=False, say=lambda s: None)
    n_cached = sum(n for n, _, _ in summary.estimate.splits.values())
    num_labels = 3
    del bb
    print(f"cache speed-up benchmark: preset {cfg['preset']}, start s = k = {cfg['start']} of {depth} layers, "
          f"batch {cfg['batch']}, {cfg['steps']} timed steps after {cfg['warmup']} warm-up, device {device}, "
          f"torch threads {torch.get_num_threads()}, M {params.model.prompt_length}, h {params.model.hub_size}, "
          f"kind {params.model.kind}")
    print(f"cache build (once, not in the ratio): {n_cached} samples in {summary.seconds:.1f} s, "
          f"{summary.estimate.total / 1e6:.1f} MB on disk")

    results: dict[str, dict] = {}
    for _ in range(repeats):
        for path in ("raw", "cache"):
            r = spawn(path, cfg)
            if path not in results or r["seconds"] < results[path]["seconds"]:
                results[path] = r
    raw, cache = results["raw"], results["cache"]
    bb_shapes = make_backbones_meta(params, cfg)
    flops = predicted(params, bb_shapes, cfg["start"], cache["mean_text_tokens"], num_labels)
    measured = cache["samples_per_s"] / raw["samples_per_s"]
    pred = flops["predicted_speedup"]

    rows = [
        ("samples/s", f"{raw['samples_per_s']:.2f}", f"{cache['samples_per_s']:.2f}"),
        ("s/step", f"{raw['seconds'] / raw['steps']:.3f}", f"{cache['seconds'] / cache['steps']:.3f}"),
        ("data loading s/step", f"{raw['data_seconds'] / raw['steps']:.3f}", f"{cache['data_seconds'] / cache['steps']:.3f}"),
        ("peak memory MB" + (" (RSS)" if device.type == "cpu" else " (CUDA)"),
         f"{raw['peak_memory_mb']:.0f}", f"{cache['peak_memory_mb']:.0f}"),
        ("  of which training", f"{raw['peak_memory_mb'] - raw['memory_before_mb']:.0f}",
         f"{cache['peak_memory_mb'] - cache['memory_before_mb']:.0f}"),
        ("starts at layer", "0 (embeddings)", str(cache["start_layer"])),
        ("GFLOPs/sample/step", f"{flops['raw'] / 1e9:.2f}", f"{flops['cached'] / 1e9:.2f}"),
        ("loss first -> last", f"{raw['loss_first']:.3f} -> {raw['loss_last']:.3f}",
         f"{cache['loss_first']:.3f} -> {cache['loss_last']:.3f}"),
    ]
    w = max(len(r[0]) for r in rows) + 2
    print(f"{'':<{w}}{'(a) raw, full stack':>24}{'(b) from the cache':>24}")
    for name, a, b in rows:
        print(f"{name:<{w}}{a:>24}{b:>24}")
    print(f"FLOPs per sample: forward skipped by the cache {flops['forward_skipped'] / 1e9:.2f} G, forward kept "
          f"{flops['forward_kept'] / 1e9:.2f} G, backward (layers {params.model.interaction.start}..{depth - 1}, "
          f"activation grads) {flops['backward'] / 1e9:.2f} G, trainable parts {flops['trainable'] / 1e9:.3f} G")
    print(f"measured speed-up {measured:.2f}x, FLOP-predicted {pred:.2f}x: {measured / pred:.0%} of the ceiling "
          f"(total {time.perf_counter() - t_all:.0f} s)")
    print(json.dumps({
        "measured_speedup": round(measured, 4), "predicted_speedup": round(pred, 4),
        "fraction_of_predicted": round(measured / pred, 4), "start": cfg["start"], "cache_layer": cfg["start"],
        "depth": depth, "preset": cfg["preset"], "batch_size": cfg["batch"], "steps": cfg["steps"],
        "warmup": cfg["warmup"], "device": str(device), "repeats": repeats,
        "raw_samples_per_s": round(raw["samples_per_s"], 4), "cache_samples_per_s": round(cache["samples_per_s"], 4),
        "raw_peak_memory_mb": round(raw["peak_memory_mb"], 1), "cache_peak_memory_mb": round(cache["peak_memory_mb"], 1),
        "cache_build_s": round(summary.seconds, 2), "torch_threads": raw["torch_threads"],
        "overrides": cfg["overrides"],
    }))
    return 0


def make_backbones_meta(params, cfg: dict):
    """The backbones' configs only (for the FLOP count), without weights."""
    from types import SimpleNamespace

    from mitp.models import backbones as bb_mod

    if cfg["preset"] == "tiny-random":
        vision, text = bb_mod.config_only(params.backbone)
    else:
        from transformers import AutoConfig

        vision = SimpleNamespace(config=AutoConfig.for_model(**json.loads(bb_mod.SHIPPED_CONFIGS[VIT_BASE].read_text())))
        text = SimpleNamespace(config=AutoConfig.for_model(**json.loads(bb_mod.SHIPPED_CONFIGS[BERT_BASE].read_text())))
    return SimpleNamespace(vision=vision, text=text)


if __name__ == "__main__":
    sys.exit(main())
