"""Training-step throughput: medvl's trainer step vs open_clip's, same towers, same batch, one run.

    .venv/bin/python benchmarks/train_throughput.py                 # batch 64, 64 px, 30 rounds
    .venv/bin/python benchmarks/train_throughput.py --rounds 60 --variants ours,open_clip

What is compared (identical model work per step):

* **ours**: ``create_model("clip-tiny")`` (timm ``test_resnet`` image tower on 1x64x64, 2-layer
  width-128 causal text transformer, context 64, vocab 4096, embed 64) + the ``infonce``
  objective, stepped by the trainer's own functions (:func:`medvl.train.trainer.forward_loss`,
  :func:`~medvl.train.trainer.trim_padding`, :func:`~medvl.train.trainer.optimizer_update`) with
  the trainer's defaults: channels-last image layout, fused AdamW (``optim.impl=auto``), the
  SDPA text block (no per-layer float masks), no-decay groups, cosine lr, fp32.
* **ours-plain**: the same code with those speed-ups off (contiguous layout, per-parameter
  AdamW loop): isolates their effect and is the accuracy reference (same init, same batches).
* **ours-bf16**: ``train.precision=bf16`` (autocast; the loss stays fp32), shown separately
  because it changes the numerics.
* **ours-compile** (opt-in, ``--variants``): ``train.compile=true`` (``torch.compile`` of the
  model; the compile time is spent in the warm-up steps and reported separately).
* **open_clip**: ``open_clip.CLIP`` with ``vision_cfg`` = timm ``test_resnet`` (avg pool, linear
  projection without bias; the trunk rebuilt for 1 input channel, since ``TimmModel`` has no
  ``in_chans``) and ``text_cfg`` = width 128, 2 layers, 4 heads, context 64, vocab 4096;
  ``ClipLoss``; AdamW with open_clip's no-decay groups, betas and eps; the step of
  ``open_clip_train.train_one_epoch`` (lr set, zero_grad, forward, loss, backward, step,
  logit-scale clamp). Gradient clipping is off in both (open_clip's default).

The batch is synthetic: random images and token ids with caption lengths uniform in 8..64, so a
batch's longest caption is ~64 and trimming padding gains nothing here (it does on short
captions, e.g. MedMNIST's). All variants live in one process and are stepped in turn, round
after round, so background load on a shared machine hits them alike; the median and the
minimum step time over rounds are reported. Peak RSS comes from a separate child process per
variant (``ru_maxrss``), so each figure is that variant's own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

VOCAB, CONTEXT, WIDTH, LAYERS, HEADS, EMBED = 4096, 64, 128, 2, 4, 64


def make_batches(n: int, batch: int, size: int, seed: int = 0) -> list[dict[str, Any]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        images = torch.rand(batch, 1, size, size, generator=g)
        lengths = torch.randint(8, CONTEXT + 1, (batch,), generator=g)
        ids = torch.randint(5, VOCAB - 1, (batch, CONTEXT), generator=g)
        mask = (torch.arange(CONTEXT)[None, :] < lengths[:, None]).long()
        ids = ids * mask
        ids[torch.arange(batch), lengths - 1] = VOCAB - 1  # an end-of-text token (highest id, as CLIP's)
        out.append({"image": images, "input_ids": ids, "attention_mask": mask})
    return out


Step = Callable[[dict[str, Any]], float]


def build_ours(args: argparse.Namespace, plain: bool = False, precision: str = "fp32", compile: bool = False) -> Step:
    import torch

    from medvl.models import create_model
    from medvl.objectives import build_objective
    from medvl.train.config import build_train_config
    from medvl.train.schedule import CosineWarmup
    from medvl.train.trainer import (
        build_optimizer,
        clip_gradients,
        forward_loss,
        optimizer_update,
        param_groups,
        trim_padding,
    )

    torch.manual_seed(0)
    model = create_model("clip-tiny", **{"image.image_size": args.image_size})
    layout = torch.contiguous_format if plain else torch.channels_last
    model = model.to(memory_format=layout).train()
    objective = build_objective([{"name": "infonce"}])
    cfg = build_train_config({"optim": {"lr": 5e-4, "weight_decay": 0.1, "impl": "loop" if plain else "auto"}})
    opt = build_optimizer(param_groups(model, cfg.optim.weight_decay), cfg, torch.device("cpu"))
    sched = CosineWarmup(opt, 10, 1000)
    params = [p for g in opt.param_groups for p in g["params"]]
    forward_model = torch.compile(model) if compile else model

    def step(b: dict[str, Any]) -> float:
        images = b["image"].contiguous(memory_format=layout)
        ids, mask = (b["input_ids"], b["attention_mask"]) if plain else trim_padding(b["input_ids"],
                                                                                      b["attention_mask"])
        loss = forward_loss(forward_model, objective, images, ids, mask, b, precision, core=model)["loss"]
        loss.backward()
        clip_gradients(params, None)
        optimizer_update(opt, sched, model)
        return float(loss.detach())

    return step


def build_open_clip(args: argparse.Namespace) -> Step:
    import open_clip
    import timm
    import torch
    from open_clip.loss import ClipLoss

    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=EMBED,
        vision_cfg={"timm_model_name": "test_resnet", "timm_model_pretrained": False, "timm_pool": "avg",
                    "timm_proj": "linear", "image_size": args.image_size},
        text_cfg={"context_length": CONTEXT, "vocab_size": VOCAB, "width": WIDTH, "heads": HEADS,
                  "layers": LAYERS},
        output_dict=True,
    )
    # open_clip's TimmModel has no in_chans: rebuild the trunk exactly as it would, for 1 channel.
    model.visual.trunk = timm.create_model("test_resnet", pretrained=False, num_classes=0, global_pool="avg",
                                           in_chans=1)
    model.train()
    loss_fn = ClipLoss()

    def exclude(n: str, p: torch.Tensor) -> bool:  # open_clip_train.main
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    named = list(model.named_parameters())
    opt = torch.optim.AdamW(
        [{"params": [p for n, p in named if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
         {"params": [p for n, p in named if not exclude(n, p) and p.requires_grad], "weight_decay": 0.1}],
        lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
    counter = [0]

    def step(b: dict[str, Any]) -> float:
        counter[0] += 1
        for g in opt.param_groups:
            g["lr"] = 5e-4 * min(1.0, counter[0] / 10)
        opt.zero_grad()
        out = model(b["image"], b["input_ids"])
        losses = loss_fn(**{k: out[k] for k in ("image_features", "text_features", "logit_scale")},
                         output_dict=True)
        total = sum(losses.values())
        total.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return float(total.detach())

    return step


def build(variant: str, args: argparse.Namespace) -> Step:
    if variant == "open_clip":
        return build_open_clip(args)
    if variant == "ours-bf16":
        return build_ours(args, precision="bf16")
    if variant == "ours-compile":
        return build_ours(args, compile=True)
    return build_ours(args, plain=variant == "ours-plain")


def child_timing(args: argparse.Namespace) -> dict[str, Any]:
    """All variants in this process, stepped in turn each round."""
    variants = args.variants.split(",")
    steps = {v: build(v, args) for v in variants}
    batches = make_batches(4, args.batch, args.image_size)
    losses: dict[str, list[float]] = {v: [] for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    warm: dict[str, float] = {v: 0.0 for v in variants}
    for r in range(args.warmup + args.rounds):
        for v in variants:
            t0 = time.perf_counter()
            losses[v].append(steps[v](batches[r % len(batches)]))
            if r >= args.warmup:
                times[v].append(time.perf_counter() - t0)
            else:
                warm[v] += time.perf_counter() - t0
    return {"times": times, "losses": losses, "warmup_s": warm}


def child_memory(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    step = build(variant, args)
    batches = make_batches(4, args.batch, args.image_size)
    for i in range(args.warmup):
        step(batches[i % len(batches)])
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run_child(args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), *extra, f"--batch={args.batch}",
           f"--image-size={args.image_size}", f"--warmup={args.warmup}", f"--rounds={args.rounds}",
           f"--threads={args.threads}", f"--variants={args.variants}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{' '.join(extra)} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    ap.add_argument("--rounds", type=int, default=30, help="timed steps per variant (interleaved)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--variants", default="ours,ours-plain,ours-bf16,open_clip")
    ap.add_argument("--child", choices=["timing", "memory"], help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        res = child_timing(args) if args.child == "timing" else child_memory(args, args.variant)
        res["threads"] = torch.get_num_threads()
        print("RESULT " + json.dumps(res))
        return
    variants = args.variants.split(",")
    timing = _run_child(args, "--child", "timing")
    memory = {v: _run_child(args, "--child", "memory", "--variant", v)["peak_rss_mb"] for v in variants}
    print(f"batch {args.batch}, {args.image_size} px, {args.warmup} warm-up + {args.rounds} timed steps per "
          f"variant (interleaved), torch threads {timing['threads']}")
    print(f"  {'variant':11s} {'median':>8s} {'best':>8s}  samples/s (median / best step)   peak RSS")
    med = {v: statistics.median(timing["times"][v]) for v in variants}
    best = {v: min(timing["times"][v]) for v in variants}
    for v in variants:
        print(f"  {v:11s} {args.batch / med[v]:8.1f} {args.batch / best[v]:8.1f}  "
              f"({1000 * med[v]:.0f} / {1000 * best[v]:.0f} ms per step)   {memory[v]:6.0f} MB")
    if "open_clip" in variants:
        for v in variants:
            if v != "open_clip":
                print(f"  ratio {v}/open_clip: {med['open_clip'] / med[v]:.2f}x (median), "
                      f"{best['open_clip'] / best[v]:.2f}x (best)")
    if "ours-compile" in variants:
        extra = timing["warmup_s"]["ours-compile"] - timing["warmup_s"].get("ours", 0.0)
        gain = med.get("ours", 0.0) - med["ours-compile"]
        verdict = f"pays after ~{extra / gain:.0f} steps" if gain > 0 else "no faster per step: it does not pay here"
        print(f"  ours-compile: {extra:.0f} s extra in its {args.warmup} warm-up steps (compiling); {verdict}")
    ratios = {v: [o / m for o, m in zip(timing["times"]["open_clip"], timing["times"][v], strict=True)]
              for v in variants if v != "open_clip" and "open_clip" in variants}
    for v, rs in ratios.items():
        print(f"  paired per-round ratio {v}/open_clip (adjacent steps): median {statistics.median(rs):.2f}x")
    ref = timing["losses"].get("ours-plain")
    if ref:
        for v in ("ours", "ours-bf16"):
            if v in timing["losses"]:
                rel = [abs(a - b) / abs(b) for a, b in zip(timing["losses"][v], ref, strict=True)]
                print(f"  accuracy: {v} vs ours-plain, same init and batches: relative loss difference "
                      f"{rel[0]:.1e} at step 1 (rounding), max {max(rel):.1e} over {len(ref)} steps "
                      f"(rounding differences compound as training proceeds)")


if __name__ == "__main__":
    main()
