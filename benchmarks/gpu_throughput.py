"""GPU training throughput: medvl vs open_clip, ViT-B/16 + BERT-base-size text tower, 224 px, bf16.

    PYTHONPATH=src python3 benchmarks/gpu_throughput.py                      # batch 256/GPU, all GPUs
    PYTHONPATH=src python3 benchmarks/gpu_throughput.py --batch 128 --steps 30 --gpus 1,2,4,8

What is compared (random init, identical model work per step, same GPU, one run):

* **medvl**: the model built through medvl's registry (``create_model`` with overrides): timm
  ``vit_base_patch16_224`` image tower (3 channels, 224 px, patch 16) + medvl's transformer text
  tower at BERT-base size (width 768, 12 layers, 12 heads, MLP 3072, vocab 30522, context 77,
  causal, end-of-text pooling), linear projections to 512; stepped by the trainer's own functions
  (``forward_loss`` under bf16 autocast with fp32 master weights and an fp32 loss,
  ``trim_padding``, ``build_optimizer`` (fused AdamW on CUDA), ``optimizer_update``), the
  ``infonce`` objective (features gathered across ranks with gradients).
* **open_clip**: ``open_clip.CLIP`` with its own ViT-B/16 vision tower (width 768, 12 layers,
  patch 16, 224 px) and a text tower of the same BERT-base size (width 768, 12 layers, 12 heads,
  vocab 30522, context 77, causal, argmax pooling), ``ClipLoss(gather_with_grad=True)`` and the
  step of ``open_clip_train`` with ``--precision amp_bf16`` (autocast bf16 around forward and
  loss, ``torch.optim.AdamW`` with open_clip's no-decay groups, logit-scale clamp).
* **open_clip-timm** (optional, ``--variants``): the same open_clip model but with
  ``timm_model_name=vit_base_patch16_224`` as the vision tower, i.e. the very image tower medvl uses.

A full training step is timed (forward + contrastive loss + backward + optimizer step), with
``torch.cuda.synchronize`` around each step; the batch is synthetic and already on the GPU
(random pixels, captions of uniform length 8..77), so the input pipeline is not measured. Each
(variant, GPU count) runs in its own process, so peak memory (``torch.cuda.max_memory_allocated``)
is that variant's own. With several GPUs, each count in ``--gpus`` runs under torchrun with DDP
(``--batch`` per GPU), giving the scaling table. Order ABBA by default (``--repeats 2``) so a
drifting clock or thermal state hits both alike; the reported figure is the median over all
timed steps of all repeats.

Needs: torch with CUDA, timm, and open_clip_torch (+ ftfy, which it imports). Without CUDA the
script prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any

VOCAB, CONTEXT, TEXT_WIDTH, TEXT_LAYERS, TEXT_HEADS, EMBED = 30522, 77, 768, 12, 12, 512


def make_batch(batch: int, image_size: int, device: Any, seed: int) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, image_size, image_size, generator=g)
    lengths = torch.randint(8, CONTEXT + 1, (batch,), generator=g)
    ids = torch.randint(5, VOCAB - 1, (batch, CONTEXT), generator=g)
    mask = (torch.arange(CONTEXT)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    ids[torch.arange(batch), lengths - 1] = VOCAB - 1  # end-of-text: the highest id (open_clip's argmax pool)
    return {"image": images.to(device), "input_ids": ids.to(device), "attention_mask": mask.to(device)}


def medvl_model_overrides(image_size: int) -> dict[str, Any]:
    """The ViT-B/16 + BERT-base-size CLIP as medvl registry overrides (on top of ``clip-tiny``)."""
    return {
        "name": "vit-b16-textbase", "embed_dim": EMBED, "projection": "linear",
        "image.name": "vit_base_patch16_224", "image.in_chans": 3, "image.image_size": image_size,
        "image.patch_size": 16,
        "text.vocab_size": VOCAB, "text.width": TEXT_WIDTH, "text.layers": TEXT_LAYERS,
        "text.heads": TEXT_HEADS, "text.mlp_ratio": 4.0, "text.context_length": CONTEXT,
        "text.causal": True, "text.pool": "eot",
    }


def build_medvl(args: argparse.Namespace, device: Any, rank: int, world: int):
    import torch

    from medvl.models import create_model
    from medvl.objectives import build_objective
    from medvl.train.config import build_train_config
    from medvl.train.schedule import CosineWarmup
    from medvl.train.trainer import build_optimizer, forward_loss, optimizer_update, param_groups, trim_padding

    torch.manual_seed(0)
    core = create_model("clip-tiny", pretrained=False, **medvl_model_overrides(args.image_size)).to(device)
    core.train()
    model = core
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(core, device_ids=[device.index])
    objective = build_objective([{"name": "infonce"}]).to(device)
    cfg = build_train_config({"optim": {"lr": 5e-4, "weight_decay": 0.1}})
    opt = build_optimizer(param_groups(core, cfg.optim.weight_decay), cfg, device)
    sched = CosineWarmup(opt, 10, 10_000)

    def step(b: dict[str, Any]) -> torch.Tensor:
        ids, mask = trim_padding(b["input_ids"], b["attention_mask"])
        loss = forward_loss(model, objective, b["image"], ids, mask, b, "bf16", core=core)["loss"]
        loss.backward()
        optimizer_update(opt, sched, core)
        return loss.detach()

    return core, step


def build_open_clip(args: argparse.Namespace, device: Any, rank: int, world: int, timm_vision: bool):
    import open_clip
    import torch
    from open_clip.loss import ClipLoss

    torch.manual_seed(0)
    if timm_vision:
        vision = {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False, "timm_pool": "token",
                  "timm_proj": "linear", "image_size": args.image_size}
    else:
        vision = {"image_size": args.image_size, "layers": 12, "width": 768, "patch_size": 16}
    text = {"context_length": CONTEXT, "vocab_size": VOCAB, "width": TEXT_WIDTH, "heads": TEXT_HEADS,
            "layers": TEXT_LAYERS}
    core = open_clip.CLIP(embed_dim=EMBED, vision_cfg=vision, text_cfg=text, output_dict=True).to(device)
    core.train()
    model = core
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(core, device_ids=[device.index])
    loss_fn = ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world)

    def exclude(n: str, p: torch.Tensor) -> bool:  # open_clip_train.main
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    named = list(core.named_parameters())
    opt = torch.optim.AdamW(
        [{"params": [p for n, p in named if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
         {"params": [p for n, p in named if not exclude(n, p) and p.requires_grad], "weight_decay": 0.1}],
        lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
    counter = [0]

    def step(b: dict[str, Any]) -> torch.Tensor:
        counter[0] += 1
        for g in opt.param_groups:
            g["lr"] = 5e-4 * min(1.0, counter[0] / 10)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            out = model(b["image"], b["input_ids"])
            total = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        total.backward()
        opt.step()
        with torch.no_grad():
            core.logit_scale.clamp_(0, math.log(100))
        return total.detach()

    return core, step


def worker(args: argparse.Namespace) -> None:
    """One variant on this process's GPU (under torchrun: one rank of a DDP job); prints RESULT json."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local)
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if world > 1:
        dist.init_process_group("nccl", device_id=device)
    if args.variant == "medvl":
        core, step = build_medvl(args, device, rank, world)
    else:
        core, step = build_open_clip(args, device, rank, world, timm_vision=args.variant == "open_clip-timm")
    params = sum(p.numel() for p in core.parameters())
    batches = [make_batch(args.batch, args.image_size, device, seed=1000 * rank + i) for i in range(4)]
    torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup):
        step(batches[i % len(batches)])
    torch.cuda.synchronize(device)
    times, losses = [], []
    for i in range(args.steps):
        t0 = time.perf_counter()
        loss = step(batches[i % len(batches)])
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    if world > 1:
        # The job is as fast as its slowest rank: take each step's max over ranks.
        t = torch.tensor(times, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        times = t.tolist()
        pk = torch.tensor([peak], device=device)
        dist.all_reduce(pk, op=dist.ReduceOp.MAX)
        peak = float(pk)
    if rank == 0:
        print("RESULT " + json.dumps({"variant": args.variant, "world": world, "times": times, "losses": losses,
                                      "peak_gib": peak, "params": params,
                                      "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__}),
              flush=True)
    if world > 1:
        dist.destroy_process_group()


def run_one(args: argparse.Namespace, variant: str, gpus: int) -> dict[str, Any]:
    common = [f"--variant={variant}", f"--batch={args.batch}", f"--image-size={args.image_size}",
              f"--steps={args.steps}", f"--warmup={args.warmup}", "--worker"]
    script = os.path.abspath(__file__)
    if gpus == 1:
        cmd = [sys.executable, script, *common]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
               script, *common]
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(script), os.pardir, "src")
    env["PYTHONPATH"] = os.path.abspath(src) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=args.timeout)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"variant": variant, "world": gpus, "error": (out.stderr or out.stdout)[-2000:]}
    res = json.loads(line[len("RESULT "):])
    res["wall_s"] = time.perf_counter() - t0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256, help="samples per GPU per step")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (kernel selection, allocator)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per variant, in ABBA order")
    ap.add_argument("--variants", default="medvl,open_clip", help="medvl, open_clip, open_clip-timm")
    ap.add_argument("--gpus", default="", help="GPU counts for the scaling table, e.g. 1,2,4,8 "
                                                 "(default: 1 and, with more GPUs, powers of 2 up to all)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per run before giving up")
    ap.add_argument("--json", help="also write all results to this file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device here; nothing measured (run it on a machine with a GPU)")
        return
    if args.worker:
        worker(args)
        return
    n = torch.cuda.device_count()
    counts = [int(c) for c in args.gpus.split(",")] if args.gpus else \
        sorted({1, *[2 ** k for k in range(1, 4) if 2 ** k <= n], n})
    counts = [c for c in counts if 1 <= c <= n]
    variants = args.variants.split(",")
    results: list[dict[str, Any]] = []
    for gpus in counts:
        order: list[str] = []
        for r in range(args.repeats):
            order += variants if r % 2 == 0 else variants[::-1]
        for v in order:
            res = run_one(args, v, gpus)
            results.append(res)
            if "error" in res:
                print(f"  {v} on {gpus} GPU(s) FAILED:\n{res['error']}", flush=True)
            else:
                print(f"  ran {v} on {gpus} GPU(s): median step {1000 * statistics.median(res['times']):.1f} ms, "
                      f"{res['wall_s']:.0f} s wall", flush=True)
    ok = [r for r in results if "error" not in r]
    if not ok:
        sys.exit("every run failed")
    first = ok[0]
    print(f"\n{first['gpu']}, torch {first['torch']}, {n} GPU(s) visible; batch {args.batch} per GPU, "
          f"{args.image_size} px, bf16 autocast (fp32 master weights), {args.warmup} warm-up + {args.steps} timed "
          f"steps per run, {args.repeats} run(s) per variant")
    print(f"  {'variant':15s} {'GPUs':>4s} {'params':>7s} {'samples/s':>10s} {'per GPU':>8s} {'step ms':>8s} "
          f"{'(min-max)':>13s} {'peak GiB':>9s}  scaling")
    table: dict[tuple[str, int], float] = {}
    for gpus in counts:
        for v in variants:
            runs = [r for r in ok if r["variant"] == v and r["world"] == gpus]
            if not runs:
                continue
            times = [t for r in runs for t in r["times"]]
            med = statistics.median(times)
            sps = args.batch * gpus / med
            table[(v, gpus)] = sps
            base = table.get((v, 1))
            scale = f"{sps / base:.2f}x of 1 GPU ({sps / base / gpus:.0%} eff.)" if base and gpus > 1 else ""
            print(f"  {v:15s} {gpus:4d} {runs[0]['params'] / 1e6:6.0f}M {sps:10.0f} {sps / gpus:8.0f} "
                  f"{1000 * med:8.1f} {1000 * min(times):6.1f}-{1000 * max(times):<6.1f} "
                  f"{max(r['peak_gib'] for r in runs):9.2f}  {scale}")
    for gpus in counts:
        for v in variants:
            if v != "medvl" and ("medvl", gpus) in table and (v, gpus) in table:
                print(f"  ratio medvl/{v} on {gpus} GPU(s): {table[('medvl', gpus)] / table[(v, gpus)]:.2f}x "
                      f"(samples/s, median step)")
    for r in ok:
        if not all(math.isfinite(x) for x in r["losses"]):
            print(f"  WARNING: non-finite loss in {r['variant']} on {r['world']} GPU(s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f)


if __name__ == "__main__":
    main()
