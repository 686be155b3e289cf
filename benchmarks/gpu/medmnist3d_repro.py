"""MedMNIST v2 3D reproduction on one GPU: ResNet-18 + 3D, the paper's recipe, several seeds in parallel.

Run from the repository root on a CUDA machine (no install needed)::

    PYTHONPATH=src python3 benchmarks/gpu/medmnist3d_repro.py runs/vesselmnist3d.npz --seeds 0,1,2 --out "$OUT"

What it does: converts the npz with :func:`medvl.data.medmnist.convert_medmnist` (the same code as
``medvl data medmnist``), then starts one worker process per seed on the same GPU; each runs
:func:`medvl.evaluate.finetune.finetune` with ``resolve_protocol("medmnist")`` -> ``medmnist3d``
(100 epochs, Adam lr 1e-3 x0.1 at 50 and 75, batch 32, best-validation-AUROC epoch tested) on
``resnet3d:resnet18`` (the paper's ResNet-18 + 3D: small stem, torch init + I3D inflation), bf16
autocast unless ``--fp32``. Exactly the CLI path of::

    medvl eval finetune --model resnet3d:resnet18 --data DIR/manifest.csv --protocol medmnist \\
        --device cuda --amp --seeds S --out seedS.json

Writes ``$OUT/seed<S>.json`` (+ predictions), ``$OUT/seed<S>.log`` (per-epoch lines with seconds)
and ``$OUT/summary.json`` (mean ± sd over seeds, per-seed 95% CIs, the paper's numbers beside).
Without CUDA it prints one line and exits 0. Needs numpy, torch, timm, pyyaml and scikit-learn;
never pydicom or nibabel (npz volumes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# MedMNIST v2 (Yang et al., Sci Data 2023), Table: ResNet-18 + 3D, test AUC / ACC
PAPER = {"organmnist3d": (0.996, 0.907), "nodulemnist3d": (0.863, 0.844), "fracturemnist3d": (0.712, 0.508),
         "adrenalmnist3d": (0.827, 0.721), "vesselmnist3d": (0.874, 0.877), "synapsemnist3d": (0.820, 0.745)}
NEEDED = ("numpy", "torch", "timm", "yaml", "sklearn")


def _missing() -> list[str]:
    import importlib.util

    return [m for m in NEEDED if importlib.util.find_spec(m) is None]


def worker(args: argparse.Namespace) -> None:
    import logging

    import torch

    from medvl.data.manifest import load_manifest
    from medvl.evaluate.finetune import finetune, protocol_config, resolve_protocol
    from medvl.evaluate.results import save_results

    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    manifest = load_manifest(Path(args.data) / "manifest.csv")
    protocol = resolve_protocol("medmnist", manifest)
    cfg = protocol_config(protocol, epochs=args.epochs, amp=not args.fp32, shape_transform=args.shape_transform or None)
    res = finetune(args.model, manifest, cfg, [args.worker_seed], "cuda", n_boot=1000,
                   encoder_kwargs={"image_size": args.size} if args.size else None)
    save_results(res, Path(args.out) / f"seed{args.worker_seed}.json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("npz", help="MedMNIST 3D npz, e.g. vesselmnist3d.npz or vesselmnist3d_64.npz")
    ap.add_argument("--name", default=None, help="subset (default: from the file name)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=None, help="default: the protocol's 100")
    ap.add_argument("--model", default="resnet3d:resnet18")
    ap.add_argument("--size", type=int, default=None, help="input cube side (default: the file's)")
    ap.add_argument("--shape-transform", action="store_true")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/medmnist3d_repro"))
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-seed", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_seed is not None:
        worker(args)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("medmnist3d_repro: no CUDA device here; nothing run (this script needs a GPU)")
        return 0
    missing = _missing()
    if missing:
        print(f"medmnist3d_repro: missing Python packages {missing}; install their wheels and rerun")
        return 1
    from medvl.data.medmnist import convert_medmnist

    npz = Path(args.npz)
    name = args.name or npz.stem.split("_")[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import tempfile

    data = Path(tempfile.mkdtemp(prefix=f"{name}_")) / "data"  # 1.9k volume files: kept out of $OUT
    t0 = time.perf_counter()
    conv = convert_medmnist(name, data, npz=npz, check_official_sizes=False)
    import numpy as np

    with np.load(npz) as z:  # the cube side of the file (28 or 64); the encoder must not resize it
        size = args.size or int(z["train_images"].shape[-1])
    print(f"converted {npz} -> {data} ({conv.split_sizes}) in {time.perf_counter() - t0:.0f}s", flush=True)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    procs = []
    for seed in seeds:
        cmd = [sys.executable, __file__, str(npz), "--data", str(data), "--worker-seed", str(seed),
               "--model", args.model, "--out", str(out)]
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        if size:
            cmd += ["--size", str(size)]
        if args.shape_transform:
            cmd.append("--shape-transform")
        if args.fp32:
            cmd.append("--fp32")
        log = (out / f"seed{seed}.log").open("w")
        procs.append((seed, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for seed, p, log in procs:
        if p.wait() != 0:
            failed.append(seed)
        log.close()
    summary = summarise(out, name, seeds, args, time.perf_counter() - t0)
    print(json.dumps(summary, indent=1))
    for seed in failed:
        print(f"seed {seed} failed; tail of {out / f'seed{seed}.log'}:")
        print("".join((out / f"seed{seed}.log").read_text().splitlines(keepends=True)[-15:]))
    return 1 if failed else 0


def summarise(out: Path, name: str, seeds: list[int], args: argparse.Namespace, wall: float) -> dict:
    import numpy as np

    per_seed = {}
    for seed in seeds:
        path = out / f"seed{seed}.json"
        if not path.exists():
            continue
        runs = json.loads(path.read_text())
        recs = [r for run in (runs if isinstance(runs, list) else [runs]) for r in run.get("records", [run])]
        row: dict = {}
        for r in recs:
            if r.get("metric") in ("auroc", "accuracy"):
                row[r["metric"]] = {"value": r.get("value"), "ci": [r.get("ci_low"), r.get("ci_high")]}
                cfg = r.get("config", {})
                row.update(best_epoch=cfg.get("best_epoch"), seconds_per_epoch=cfg.get("seconds_per_epoch"))
        per_seed[seed] = row
    agg = {}
    for m in ("auroc", "accuracy"):
        vals = np.array([r[m]["value"] for r in per_seed.values() if m in r], dtype=float)
        if vals.size:
            agg[m] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
                      "n_seeds": int(vals.size)}
    paper = PAPER.get(name)
    summary = {"dataset": name, "model": args.model, "epochs": args.epochs or 100, "amp_bf16": not args.fp32,
               "shape_transform": args.shape_transform, "wall_seconds": round(wall, 1), "per_seed": per_seed,
               "mean_sd": agg, "paper_resnet18_3d": {"auroc": paper[0], "accuracy": paper[1]} if paper else None}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    sys.exit(main())
