"""Bench task ``segment``: train a dense head on the suite model's image tower, score the masks.

The encoder is the suite model (a medvl checkpoint, a ``timm:`` spec); a light FPN decoder (or the
linear probe, ``head: linear``) is trained on the dataset's train split with ``medvl train-seg``'s
library function, the encoder ``frozen`` by default (the foundation-model question: how good are
the features as they are?), then :func:`medvl.evaluate.segment.segment_eval` scores the split
(Dice / IoU / HD95 / NSD per class, patient-level CIs, per-case values for paired tests). The
training run is kept beside the job's result file, so a re-run of the suite reuses the cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from medvl.bench.tasks.registry import TaskContext, register_task
from medvl.evaluate.metrics import register_metric_info

if TYPE_CHECKING:
    from medvl.evaluate.results import EvalResult

register_metric_info("hd95", higher_is_better=False, description="95% Hausdorff distance (mm or pixels)")

PARAMS = {"steps", "freeze", "head", "label_fraction", "mask_column", "batch_size", "lr", "width", "train_split",
          "nsd_tolerance", "seg_image_size"}


@register_task("segment", params=PARAMS, needs_text=False, deterministic=False, headline="dice")
def run(ctx: TaskContext) -> list[EvalResult] | str:
    """Train-seg with the suite seed on the train split, then eval segment on the task's split."""
    from medvl.evaluate.segment import segment_eval
    from medvl.segment.train import load_seg_config, train_segmentation

    spec = ctx.encoder_spec
    if spec.startswith(("hf:", "openclip:")):
        return f"segmentation heads need a medvl checkpoint or timm: tower; {spec!r} is not supported yet"
    p = ctx.params
    size = p.get("seg_image_size") or ctx.encoder_options.get("image_size") or 64
    overrides = [f"data.manifest={ctx.manifest_path}", f"model.encoder={spec}", f"seed={ctx.seed}",
                 f"device={ctx.device}", f"model.freeze={p.get('freeze', 'frozen')}",
                 f"model.head={p.get('head', 'fpn')}", f"model.width={p.get('width', 32)}",
                 f"data.label_fraction={p.get('label_fraction', 1.0)}",
                 f"data.mask_column={p.get('mask_column', 'mask')}",
                 f"data.train_split={p.get('train_split', 'train')}", f"data.image_size={size}",
                 f"optim.max_steps={p.get('steps', 100)}", f"optim.batch_size={p.get('batch_size', 16)}",
                 f"optim.lr={p.get('lr', 0.002)}", "checkpoint_every=1000000", "log_every=1000"]
    if spec.startswith("timm:") and "in_chans" in ctx.encoder_options:
        overrides.append(f"model.in_chans={ctx.encoder_options['in_chans']}")
    run_dir = ctx.out_path.with_name(ctx.out_path.stem + "-segrun")
    cfg = load_seg_config(None, overrides, run_dir)
    res = train_segmentation(cfg, resume=True)
    assert res.last_checkpoint is not None
    c = ctx.common
    result = segment_eval(res.last_checkpoint, ctx.manifest_path, ctx.split, n_boot=c["n_boot"], seed=ctx.seed,
                          tolerance=float(p.get("nsd_tolerance", 1.0)), device=ctx.device,
                          model_name=c["model_name"], dataset=c["dataset"])
    # The scored head, relative to the bench folder (<bench>/results/<job>.json): the report's
    # segmentation thumbnails (medvl.bench.segment_figures) re-run exactly this checkpoint.
    ckpt = Path(res.last_checkpoint).resolve()
    bench_dir = ctx.out_path.parent.parent.resolve()
    rel = ckpt.relative_to(bench_dir).as_posix() if ckpt.is_relative_to(bench_dir) else str(ckpt)
    for rec in result.records:
        rec.config = {**rec.config, "seg_checkpoint": rel}
    return [result]
