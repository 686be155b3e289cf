"""Memory per rank, DDP vs FSDP2, on CPU (gloo): what sharding saves for a given model.

    .venv/bin/python benchmarks/fsdp_memory.py                      # clip-small, 2 processes
    .venv/bin/python benchmarks/fsdp_memory.py --model clip-tiny --nproc 4 --steps 5

Each mode runs in its own set of processes (``torch.multiprocessing.spawn``, gloo): the model is
built the way the trainer builds it (``create_model`` + ``nn.parallel.DistributedDataParallel``, or
:func:`medvl.train.fsdp.shard_model`), trained ``--steps`` steps with the ``infonce`` objective
and AdamW on random 64 px images and captions (batch ``--batch`` per rank), then each rank
reports the bytes it holds for parameters, gradients and AdamW state (local shards under FSDP)
and its peak RSS (``ru_maxrss``, which also counts the Python/torch runtime, the same for both).
Rank 0's figures are printed; ranks differ by at most one shard's padding.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import tempfile
from pathlib import Path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bytes(tensors: list) -> int:  # type: ignore[type-arg]
    from medvl.train.fsdp import sharded_bytes

    return sharded_bytes([t for t in tensors if t is not None])


def run(rank: int, world: int, port: int, mode: str, args: argparse.Namespace, out: str) -> None:
    import torch
    import torch.distributed as dist

    from medvl.models import create_model
    from medvl.objectives import build_objective
    from medvl.train.fsdp import replicated_params, shard_model, split_replicated
    from medvl.train.trainer import forward_loss, param_groups

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    core = create_model(args.model, pretrained=False).train()
    model = core
    groups = None
    if mode == "fsdp":
        shard_model(core)
        groups = split_replicated(param_groups(core, 0.1), replicated_params(core))
    else:
        model = torch.nn.parallel.DistributedDataParallel(core)
        groups = param_groups(core, 0.1)
    opt = torch.optim.AdamW(groups, lr=1e-4, foreach=True)
    objective = build_objective([{"name": "infonce"}])
    g = torch.Generator().manual_seed(rank)
    ctx = core.cfg.text.context_length
    size = core.cfg.image.image_size
    for _ in range(args.steps):
        images = torch.rand(args.batch, core.cfg.image.in_chans, size, size, generator=g)
        ids = torch.randint(5, core.cfg.text.vocab_size, (args.batch, ctx), generator=g)
        mask = torch.ones_like(ids)
        loss = forward_loss(model, objective, images, ids, mask, {})["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep the gradients allocated, as they are during a step
    params = list(core.parameters())
    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.ndim > 0]
    res = {"params_mb": _bytes(params) / 2**20, "grads_mb": _bytes([p.grad for p in params]) / 2**20,
           "adam_mb": _bytes(state) / 2**20,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "n_params": sum(p.numel() for p in create_model(args.model, pretrained=False).parameters())}
    if rank == 0:
        Path(out).write_text(json.dumps(res))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="clip-small")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="samples per rank per step")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    import torch.multiprocessing as mp

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("ddp", "fsdp"):
            out = str(Path(tmp) / f"{mode}.json")
            mp.spawn(run, args=(args.nproc, _port(), mode, args, out), nprocs=args.nproc, join=True)
            results[mode] = json.loads(Path(out).read_text())
    n = results["ddp"]["n_params"]
    print(f"{args.model} ({n / 1e6:.1f} M parameters), {args.nproc} processes (gloo, CPU), batch {args.batch}/rank, "
          f"{args.steps} steps; rank 0:")
    print(f"  {'mode':5s} {'params MB':>10s} {'grads MB':>9s} {'AdamW MB':>9s} {'sum MB':>8s} {'peak RSS MB':>12s}")
    for mode, r in results.items():
        total = r["params_mb"] + r["grads_mb"] + r["adam_mb"]
        print(f"  {mode:5s} {r['params_mb']:10.1f} {r['grads_mb']:9.1f} {r['adam_mb']:9.1f} {total:8.1f} "
              f"{r['peak_rss_mb']:12.0f}")
    d, f = results["ddp"], results["fsdp"]
    ratio = (f["params_mb"] + f["grads_mb"] + f["adam_mb"]) / (d["params_mb"] + d["grads_mb"] + d["adam_mb"])
    print(f"  FSDP holds {ratio:.2f}x of DDP's model state per rank (ideal 1/{args.nproc} = {1 / args.nproc:.2f}); "
          f"peak RSS {f['peak_rss_mb'] - d['peak_rss_mb']:+.0f} MB")


if __name__ == "__main__":
    main()
