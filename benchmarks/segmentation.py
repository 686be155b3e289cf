"""Segmentation: MONAI UNet from scratch vs a medvl pretrained encoder + decoder, in one run on one CPU.

    OMP_NUM_THREADS=1 PYTHONPATH=src python3 benchmarks/segmentation.py --out runs/bench-seg
    OMP_NUM_THREADS=1 PYTHONPATH=src python3 benchmarks/segmentation.py --quick      # smoke run (minutes)
    OMP_NUM_THREADS=1 PYTHONPATH=src python3 benchmarks/segmentation.py --out runs/bench-seg --skip-2d --skip-3d \
        --prompts       # part 3, after part 1 (reuses its phantoms and pretrained encoder)

Part 1 (2D, chest phantoms with organ label maps, ``medvl data synth --anatomy``; lungs + heart):

* **pretrain**: clip-tiny on the phantoms' *train* split (images + reports, no masks) for
  ``--pretrain-steps`` steps with ``configs/clip-tiny-synth.yaml`` (medvl's trainer);
* arms, each trained for ``--steps`` steps at batch ``--batch`` (AdamW, same cosine schedule, the
  same batches: medvl's ``BatchMaker`` draws them for every arm), on ``--fractions`` of the
  training patients' masks, ``--seeds`` seeds:
  (a) ``monai-unet``: ``monai.networks.nets.UNet`` (2D, channels 16-32-64-128, strides 2-2-2,
  1 residual unit) from scratch with ``monai.losses.DiceCELoss``;
  (b) ``medvl-frozen``: the pretrained clip-tiny tower frozen + medvl's FPN decoder (Dice + CE);
  (c) ``medvl-finetune``: the same, encoder fine-tuned (encoder lr = lr / 10);
  (d) ``medvl-scratch``: the same architecture fine-tuned from random init (what pretraining adds);
* every arm is predicted and scored by the same code (``medvl.evaluate.segment.segment_eval``) on
  the *test* split: Dice per case (mean over lungs and heart), mean ± sd over seeds, 95% patient
  bootstrap CI of the seed-averaged per-case Dice, paired patient-level bootstrap vs MONAI;
* cost: training seconds per epoch (an epoch = training images / batch steps) and inference
  images/s (batched forward at 64 px), as ratios medvl / MONAI.

Part 2 (3D, real MRI, ``../shared/data/real/msd_hippocampus``; skipped with ``--skip-3d`` or when
absent): MONAI 3D UNet vs medvl's clip3d-tiny 3D ResNet + FPN decoder (random init, there is no
pretrained 3D tower here), both trained ``--steps-3d`` steps on 32^3 patches (two thirds centred on
foreground) of the train split, sliding-window inference on the **validation** split (the MSD test
labels are not public; the test split of this copy is held out elsewhere), Dice per structure with
95% CIs. Published MSD figures for orientation only (different split, full training budgets).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medvl.evaluate.segment import segment_eval
from medvl.evaluate.stats import bootstrap_statistic, paired_bootstrap_statistic
from medvl.segment.data import CaseCache, is_volume_path
from medvl.segment.train import BatchMaker, load_seg_config, train_segmentation, training_cases

# nnU-Net on the MSD hippocampus test set (Isensee et al., Nature Methods 2021; MSD leaderboard):
# Dice about 0.90 (anterior) and 0.89 (posterior). Orientation only: other split, full budget.
PUBLISHED_MSD = {"anterior": 0.90, "posterior": 0.89}
TAG = ""


class MonaiPeer(nn.Module):
    """MONAI's UNet with the attributes medvl's evaluator reads (task, dims, in_chans, classes, cfg)."""

    def __init__(self, dims: int, classes: list[str], image_size: int, patch: list[int], mask_column: str,
                 task: str = "multiclass"):
        super().__init__()
        from monai.networks.nets import UNet

        self.net = UNet(spatial_dims=dims, in_channels=1, out_channels=len(classes) + (task == "multiclass"),
                        channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1)
        self.task, self.dims, self.in_chans, self.classes = task, dims, 1, list(classes)
        self.cfg = {"image_size": image_size, "patch_size": patch, "mask_column": mask_column}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_monai(cfg: Any) -> tuple[MonaiPeer, float, int]:
    """MONAI UNet + DiceCELoss on the very batches medvl's trainer draws for this config."""
    from monai.losses import DiceCELoss

    from medvl.segment.losses import class_index
    from medvl.train.rng import seed_everything
    from medvl.train.schedule import lr_at

    seed_everything(cfg.seed)
    manifest, layout, cases = training_cases(cfg)
    dims = 3 if is_volume_path(cases[0].image) else 2
    model = MonaiPeer(dims, layout.classes, cfg.data.image_size, cfg.data.patch_size, cfg.data.mask_column,
                      layout.task)
    maker = BatchMaker(CaseCache(manifest, cases, layout), dims, cfg.data.image_size, cfg.data.patch_size,
                       cfg.data.foreground_oversample, cfg.optim.batch_size, cfg.seed)
    # label maps: softmax over background + classes; finding masks (may overlap): one sigmoid per class
    multiclass = layout.task == "multiclass"
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True) if multiclass else DiceCELoss(sigmoid=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    model.train()
    t0 = time.perf_counter()
    for step in range(cfg.optim.max_steps):
        x, y, _ = maker(step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.max_steps)
        loss = loss_fn(model(x), class_index(y)[:, None] if multiclass else y.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval(), time.perf_counter() - t0, len(cases)


@torch.no_grad()
def images_per_second(model: nn.Module, size: int, n: int = 256, batch: int = 32) -> float:
    model.eval()
    x = torch.rand(batch, 1, size, size)
    model(x)  # warm-up
    rates = []
    for _ in range(3):  # median of 3: the machine is shared
        t0 = time.perf_counter()
        for _ in range(max(1, n // batch)):
            model(x)
        rates.append(max(1, n // batch) * batch / (time.perf_counter() - t0))
    return float(np.median(rates))


def run_arm(arm: str, base: list[str], out: Path, seed: int, fraction: float, encoder: str) -> dict[str, Any]:
    over = base + [f"seed={seed}", f"data.label_fraction={fraction}"]
    run_dir = out / f"{TAG}{arm}-f{fraction}-s{seed}"
    if arm == "monai-unet":
        cfg = load_seg_config(None, over, run_dir)
        model, seconds, n_train = train_monai(cfg)
        target: Any = model
    else:
        freeze = "frozen" if arm == "medvl-frozen" else "finetune"
        enc = "clip-tiny" if arm == "medvl-scratch" else encoder
        cfg = load_seg_config(None, over + [f"model.encoder={enc}", f"model.freeze={freeze}",
                                            "checkpoint_every=100000"], run_dir)
        res = train_segmentation(cfg)
        seconds, n_train = res.seconds, res.n_train_cases
        from medvl.segment.model import load_seg_model

        target = load_seg_model(res.last_checkpoint)
    ev = segment_eval(target, cfg.data.manifest, "test", n_boot=0, model_name=arm)
    per_case = np.asarray(ev.predictions.extra["dice"], dtype=float)
    per_class = next(r for r in ev.records if r.metric == "dice").per_class
    present = [r.value for r in ev.records if r.metric.startswith("dice_present/") and r.value == r.value]
    steps_per_epoch = max(1, math.ceil(n_train / cfg.optim.batch_size))
    return {"arm": arm, "seed": seed, "fraction": fraction, "dice": float(per_case.mean()), "per_case": per_case,
            "per_class": per_class, "dice_present": float(np.mean(present)) if present else None,
            "ids": ev.predictions.ids, "patients": ev.predictions.patient_ids,
            "train_seconds": seconds, "sec_per_epoch": seconds / cfg.optim.max_steps * steps_per_epoch,
            "n_train": n_train, "model": target}


def part_2d(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from medvl.data.synthetic import generate_phantoms
    from medvl.train.config import load_train_config
    from medvl.train.trainer import train

    data = out / "phantoms"
    manifest = data / "manifest.csv"
    if not manifest.is_file():
        generate_phantoms(data, n=args.n, size=64, anatomy=True, overwrite=True)
    enc_dir = out / "clip-tiny-pretrain"
    if not (enc_dir / "last" / "weights.safetensors").is_file():
        t0 = time.perf_counter()
        tcfg = load_train_config("configs/clip-tiny-synth.yaml",
                                 [f"data.manifest={manifest}", f"train.max_steps={args.pretrain_steps}",
                                  "train.device=cpu", f"train.ckpt_every={args.pretrain_steps}"], enc_dir)
        train(tcfg)
        print(f"pretrained clip-tiny: {args.pretrain_steps} steps in {time.perf_counter() - t0:.0f} s")
    base = [f"data.manifest={manifest}", f"data.mask_column={args.mask_column}", "data.image_size=64",
            f"optim.max_steps={args.steps}", f"optim.batch_size={args.batch}", "optim.lr=0.002",
            "log_every=1000", "model.width=32"]
    rows = []
    for fraction in args.fractions:
        for seed in args.seeds:
            for arm in args.arms:
                r = run_arm(arm, base, out, seed, fraction, str(enc_dir / "last"))
                print(f"  {arm:15s} fraction {fraction:<5} seed {seed}: Dice {r['dice']:.3f} "
                      f"({r['n_train']} train images, {r['train_seconds']:.0f} s)", flush=True)
                rows.append(r)
    summary: dict[str, Any] = {"fractions": {}, "cost": {}}
    for fraction in args.fractions:
        per_arm = {}
        ref = None
        for arm in args.arms:
            rs = [r for r in rows if r["arm"] == arm and r["fraction"] == fraction]
            avg = np.mean([r["per_case"] for r in rs], axis=0)  # seed-averaged per-case Dice
            groups = rs[0]["patients"]
            ci = bootstrap_statistic(avg, groups=groups, n_boot=1000, seed=0)
            dices = [r["dice"] for r in rs]
            sd = float(np.std(dices, ddof=1)) if len(dices) > 1 else 0.0
            classes = rs[0]["per_class"]
            pres = [r["dice_present"] for r in rs if r["dice_present"] is not None]
            per_arm[arm] = {"mean": float(np.mean(dices)), "sd": sd, "ci": [ci.low, ci.high], "seeds": dices,
                            "dice_present_mean": float(np.mean(pres)) if pres else None,
                            "dice_present_sd": float(np.std(pres, ddof=1)) if len(pres) > 1 else None,
                            "per_class": {c: float(np.mean([r["per_class"][c] for r in rs])) for c in classes}}
            if arm == "monai-unet":
                ref = avg
        if ref is not None:
            for arm in args.arms:
                if arm == "monai-unet":
                    continue
                rs = [r for r in rows if r["arm"] == arm and r["fraction"] == fraction]
                avg = np.mean([r["per_case"] for r in rs], axis=0)
                t = paired_bootstrap_statistic(avg, ref, groups=rs[0]["patients"], n_boot=2000, seed=0, name="dice")
                per_arm[arm]["vs_monai"] = {"delta": t.delta, "ci": [t.ci_low, t.ci_high], "p": t.p_value}
        summary["fractions"][str(fraction)] = per_arm
    full = max(args.fractions)
    for arm in args.arms:
        rs = [r for r in rows if r["arm"] == arm and r["fraction"] == full]
        summary["cost"][arm] = {"sec_per_epoch": float(np.mean([r["sec_per_epoch"] for r in rs])),
                                "images_per_s": images_per_second(rs[0]["model"], 64)}
    if "monai-unet" in summary["cost"]:
        m = summary["cost"]["monai-unet"]
        for c in summary["cost"].values():
            c["epoch_time_ratio_vs_monai"] = c["sec_per_epoch"] / m["sec_per_epoch"]
            c["throughput_ratio_vs_monai"] = c["images_per_s"] / m["images_per_s"]
    return summary


def part_3d(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    manifest = Path(args.hippocampus)
    if not manifest.is_file():
        return {"skipped": f"{manifest} not found"}
    base = [f"data.manifest={manifest}", "data.patch_size=[32,32,32]", f"optim.max_steps={args.steps_3d}",
            "optim.batch_size=4", "optim.lr=0.002", "log_every=1000", "checkpoint_every=100000", "model.width=32"]
    result: dict[str, Any] = {"split": "val", "steps": args.steps_3d, "published_msd_nnunet_test": PUBLISHED_MSD}
    for arm in ("monai-unet-3d", "medvl-clip3d-fpn"):
        t0 = time.perf_counter()
        if arm == "monai-unet-3d":
            cfg = load_seg_config(None, base, out / arm)
            model, seconds, _ = train_monai(cfg)
            target: Any = model
        else:
            cfg = load_seg_config(None, base + ["model.encoder=clip3d-tiny"], out / arm)
            res = train_segmentation(cfg)
            seconds = res.seconds
            from medvl.segment.model import load_seg_model

            target = load_seg_model(res.last_checkpoint)
        t1 = time.perf_counter()
        ev = segment_eval(target, manifest, "val", n_boot=1000, model_name=arm)
        rec = {r.metric: r for r in ev.records}
        result[arm] = {"train_seconds": seconds, "eval_seconds": time.perf_counter() - t1,
                       "dice": {c: {"value": rec[f"dice/{c}"].value, "ci": [rec[f"dice/{c}"].ci_low,
                                                                            rec[f"dice/{c}"].ci_high]}
                                for c in ("anterior", "posterior")},
                       "hd95_mm": rec["hd95"].value, "n_cases": rec["dice"].n}
        result[arm]["per_case"] = ev.predictions.extra["dice"]
        result[arm]["patients"] = ev.predictions.patient_ids
        print(f"  {arm}: anterior {rec['dice/anterior'].value:.3f}, posterior {rec['dice/posterior'].value:.3f} "
              f"({seconds:.0f} s training, {time.perf_counter() - t0:.0f} s in all)", flush=True)
    a, b = result["medvl-clip3d-fpn"], result["monai-unet-3d"]
    t = paired_bootstrap_statistic(a.pop("per_case"), b.pop("per_case"), groups=a.pop("patients"), n_boot=2000,
                                   seed=0, name="dice")
    b.pop("patients")
    result["paired_medvl_minus_monai"] = {"delta": t.delta, "ci": [t.ci_low, t.ci_high], "p": t.p_value}
    return result


def part_prompts(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Text prompts on the phantoms' finding masks: zero-shot grounding masks vs a trained text-conditioned decoder.

    Both read the pretrained clip-tiny of part 1 and are scored on the test split's *present* findings
    (Dice per finding, patient CIs); the zero-shot threshold is chosen on the val split.
    """
    from medvl.evaluate.segment_prompt import text_prompt_eval

    manifest = out / "phantoms" / "manifest.csv"
    enc = out / "clip-tiny-pretrain" / "last"
    if not enc.is_dir():
        return {"skipped": f"run part 1 first ({enc} is missing)"}
    result: dict[str, Any] = {}
    for phrases in ("report", "class"):
        ev = text_prompt_eval(enc, manifest, "test", phrases=phrases, n_boot=1000)
        rec = {r.metric: r for r in ev.records}
        result[f"zero-shot ({phrases} phrase)"] = {
            "threshold": rec["dice"].config["threshold"],
            "dice": {m.split("/", 1)[1]: [r.value, r.ci_low, r.ci_high] for m, r in rec.items()
                     if m.startswith("dice/")}, "mean": rec["dice"].value}
    from medvl.evaluate.segment import segment_eval
    from medvl.segment.model import load_seg_model

    cfg = load_seg_config(None, [f"data.manifest={manifest}", "data.image_size=64", f"model.encoder={enc}",
                                 "model.prompt=text", "model.freeze=finetune", f"optim.max_steps={args.steps}",
                                 f"optim.batch_size={args.batch}", "optim.lr=0.002", "model.width=32",
                                 "checkpoint_every=100000", "log_every=1000"], out / "text-decoder")
    res = train_segmentation(cfg)
    ev = segment_eval(load_seg_model(res.last_checkpoint), manifest, "test", n_boot=1000)
    rec = {r.metric: r for r in ev.records}
    result["trained text-conditioned decoder"] = {
        "dice": {m.split("/", 1)[1]: [r.value, r.ci_low, r.ci_high] for m, r in rec.items() if m.startswith("dice/")},
        "mean": rec["dice"].value, "train_seconds": res.seconds}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-seg")
    ap.add_argument("--n", type=int, default=800, help="phantoms to generate (64 px)")
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--steps", type=int, default=150, help="segmentation training steps per 2D arm")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    ap.add_argument("--arms", nargs="+", default=["monai-unet", "medvl-frozen", "medvl-finetune", "medvl-scratch"])
    ap.add_argument("--steps-3d", type=int, default=300)
    ap.add_argument("--hippocampus", default="../shared/data/real/msd_hippocampus/manifest.csv")
    ap.add_argument("--skip-2d", action="store_true")
    ap.add_argument("--skip-3d", action="store_true")
    ap.add_argument("--mask-column", default="anatomy_mask",
                    help="part 1's masks: anatomy_mask (lungs, heart) or mask (the findings, multilabel)")
    ap.add_argument("--tag", default="", help="prefix of run folders and of the JSON (several part-1 variants)")
    ap.add_argument("--prompts", action="store_true", help="part 3: zero-shot text masks vs a text-conditioned "
                                                           "decoder (needs part 1's pretrained encoder)")
    ap.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run of the whole script")
    args = ap.parse_args()
    global TAG
    TAG = f"{args.tag}-" if args.tag else ""
    if args.quick:
        args.n, args.pretrain_steps, args.steps, args.seeds, args.steps_3d = 120, 20, 10, [0, 1], 5
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"args": vars(args), "torch_threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    if not args.skip_2d:
        print(f"part 1: 2D segmentation of the phantoms' {args.mask_column} masks (test split)")
        report["2d"] = part_2d(args, out)
        for fraction, arms in report["2d"]["fractions"].items():
            print(f"fraction {fraction}:")
            for arm, s in arms.items():
                vs = s.get("vs_monai")
                extra = f"; vs MONAI {vs['delta']:+.3f} [{vs['ci'][0]:+.3f}, {vs['ci'][1]:+.3f}] p={vs['p']:.3f}" \
                    if vs else ""
                if s.get("dice_present_mean") is not None:
                    extra += f"; Dice on present findings {s['dice_present_mean']:.3f} ± {s['dice_present_sd']:.3f}"
                print(f"  {arm:15s} Dice {s['mean']:.3f} ± {s['sd']:.3f} (CI {s['ci'][0]:.3f}-{s['ci'][1]:.3f}){extra}")
        for arm, c in report["2d"]["cost"].items():
            print(f"  {arm:15s} {c['sec_per_epoch']:.2f} s/epoch ({c.get('epoch_time_ratio_vs_monai', 1):.2f}x MONAI), "
                  f"{c['images_per_s']:.0f} images/s ({c.get('throughput_ratio_vs_monai', 1):.2f}x MONAI)")
    if not args.skip_3d:
        print("part 2: 3D hippocampus (real MRI), validation split")
        report["3d"] = part_3d(args, out)
        print(json.dumps({k: v for k, v in report["3d"].items()}, indent=1, default=float))
    if args.prompts:
        print("part 3: text prompts on the finding masks (test split, present findings)")
        report["prompts"] = part_prompts(args, out)
        for name, r in report["prompts"].items():
            if isinstance(r, dict) and "dice" in r:
                per = ", ".join(f"{k} {v[0]:.3f}" for k, v in r["dice"].items())
                print(f"  {name}: mean Dice {r['mean']:.3f} ({per})")
    report["seconds"] = time.perf_counter() - t0
    name = f"segmentation{TAG and '-' + TAG.rstrip('-')}" + ("-prompts" if args.skip_2d and args.skip_3d else "")
    name += ".json"
    (out / name).write_text(json.dumps(report, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                       else str(o)))
    print(f"wrote {out / name} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
