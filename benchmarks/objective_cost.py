"""Training cost of each literature objective, relative to plain CLIP, measured side by side.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/objective_cost.py            # 64 px phantoms, batch 64
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/objective_cost.py --rounds 20 --variants clip,local

Every variant is the ablation's model (``clip-tiny`` with ``output_stride: 8``, an 8x8 feature
grid at 64 px) with the ablation's objectives (configs/ablation-phantoms.yaml), stepped by the
trainer's own functions (``forward_loss`` with the objective's context, AdamW, clipping). The
batches are real phantom studies (images + reports + the card for ``describe``), made once.
All variants live in one process and are stepped in turn, round after round, so background
load on a shared machine hits them alike; the ratio of median step times is the figure.
No peer library offers these objectives (open_clip trains plain CLIP/SigLIP/CoCa); plain CLIP
itself is compared with open_clip's step in benchmarks/train_throughput.py, so cost here is
relative to medvl's plain CLIP step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS: dict[str, list[dict[str, Any]]] = {
    "clip": [{"name": "infonce"}],
    "local": [{"name": "infonce"}, {"name": "local", "weight": 1.0}],
    "masked": [{"name": "infonce"}, {"name": "mim", "weight": 1.0}, {"name": "mlm", "weight": 0.5}],
    "distill": [{"name": "infonce"}, {"name": "distill", "alpha": 1.0, "weight": 0.5, "queue_size": 1024}],
    "describe": [{"name": "infonce"}, {"name": "describe", "weight": 1.0}],
    "combo": [{"name": "infonce"}, {"name": "local", "weight": 1.0},
              {"name": "distill", "alpha": 1.0, "weight": 0.5, "queue_size": 1024},
              {"name": "describe", "weight": 1.0}],
}


def make_batches(root: Path, n: int, batch: int, size: int) -> tuple[list[dict[str, Any]], Any]:
    import torch

    from medvl.data.synthetic import generate_phantoms
    from medvl.train.config import DataConfig
    from medvl.train.data import build_train_data

    manifest = generate_phantoms(root / "phantoms", n=max(4 * batch, 400), size=size, seed=0)
    data = build_train_data(DataConfig(manifest=str(manifest), image_size=size), seed=0)
    order = torch.randperm(len(data.indices), generator=torch.Generator().manual_seed(0)).tolist()
    batches = []
    for i in range(n):
        idx = [data.indices[order[(i * batch + j) % len(order)]] for j in range(batch)]
        batches.append(data.collate([data.dataset[k] for k in idx]))
    return batches, data


def build_variant(objectives: list[dict[str, Any]], data: Any, size: int) -> Any:
    import torch

    from medvl.models import create_model
    from medvl.objectives import TrainingDataInfo, build_objective
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
    model = create_model("clip-tiny", image={"image_size": size, "kwargs": {"output_stride": 8}},
                         tokenizer_texts=data.train_texts)
    model = model.to(memory_format=torch.channels_last).train()
    objective = build_objective(objectives)
    objective.bind(model, TrainingDataInfo(classes=data.classes, task=data.task, card=data.card))
    objective.train()
    cfg = build_train_config({"optim": {"lr": 5e-4, "weight_decay": 0.1}})
    groups = param_groups(model, 0.1)
    extra = [p for p in objective.parameters() if p.requires_grad]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    opt = build_optimizer(groups, cfg, torch.device("cpu"))
    sched = CosineWarmup(opt, 10, 1000)
    params = [p for g in opt.param_groups for p in g["params"]]

    def step(b: dict[str, Any]) -> float:
        images = b["image"].contiguous(memory_format=torch.channels_last)
        ids, mask = trim_padding(**model.tokenizer(b["text"]))
        loss = forward_loss(model, objective, images, ids, mask, b, core=model)["loss"]
        loss.backward()
        clip_gradients(params, 1.0)
        optimizer_update(opt, sched, model)
        return float(loss.detach())

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    import torch

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        batches, data = make_batches(Path(tmp), args.rounds + args.warmup, args.batch, args.image_size)
        steps = {}
        for name in names:
            if name not in VARIANTS:
                raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
            steps[name] = build_variant(VARIANTS[name], data, args.image_size)
        times: dict[str, list[float]] = {n: [] for n in names}
        for r, b in enumerate(batches):
            for name in names:
                t0 = time.perf_counter()
                steps[name](b)
                if r >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["clip"]) if "clip" in times else None
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, {args.image_size} px, {args.rounds} rounds")
    print(f"{'variant':10s} {'median s/step':>14s} {'samples/s':>10s} {'cost vs clip':>13s}")
    for name in names:
        med = statistics.median(times[name])
        rel = f"{med / base:.2f}x" if base else "-"
        print(f"{name:10s} {med:14.3f} {args.batch / med:10.1f} {rel:>13s}")


if __name__ == "__main__":
    main()
