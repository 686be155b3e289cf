"""Bench task ``finetune``: train the image tower + a head end to end, one fresh encoder per seed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medvl.bench.tasks.registry import TaskContext, register_task

if TYPE_CHECKING:
    from medvl.evaluate.results import EvalResult


@register_task("finetune", params={"protocol", "epochs", "lr", "weight_decay", "batch_size", "patience", "augment",
                                   "small_stem", "torch_init", "normalise"}, headline="auroc")
def run(ctx: TaskContext) -> list[EvalResult]:
    """Fine-tuning via :func:`medvl.evaluate.finetune.finetune`; builds its encoders itself (no shared features)."""
    from medvl.data.manifest import load_eval_manifest
    from medvl.evaluate.finetune import finetune, protocol_config

    params = dict(ctx.params)
    protocol = params.pop("protocol", "default")
    cfg = protocol_config(protocol, **params)
    return finetune(ctx.encoder_spec, load_eval_manifest(ctx.manifest_path), cfg, seeds=[ctx.seed], device=ctx.device,
                    split=ctx.split, encoder_kwargs=ctx.encoder_options, model_name=ctx.job.model,
                    n_boot=ctx.suite.bootstrap)
