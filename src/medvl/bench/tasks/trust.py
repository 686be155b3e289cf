"""Bench task ``trust``: the whole robustness report of one model, with its model card linked from the bench report.

Runs :func:`medvl.evaluate.robustness.robustness_eval` (corruptions x severities, site shift,
subgroups, calibration, and for text encoders prompt sensitivity and confusable pairs), writes
the model card under ``<bench>/cards/`` and stores a few summary records so the leaderboard can
rank models on them: the clean task metric (with the clean predictions, so the report's paired
tests work), the mean relative drop under corruption, the worst site drop, ECE before and after
temperature scaling, AURC and the worst subgroup gap. Every record's config carries
``model_card`` (the card's path relative to the bench folder), which the report links.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from medvl.bench.tasks.registry import TaskContext, register_task
from medvl.evaluate.metrics import register_metric_info

if TYPE_CHECKING:
    from medvl.evaluate.results import EvalResult

for _name, _desc in (("mean_relative_drop", "mean relative drop of the task metric over corruption x severity"),
                     ("worst_site_drop", "largest drop of the task metric on a site the head was not trained on"),
                     ("ece_ts", "ECE after temperature scaling fitted on validation"),
                     ("aurc", "area under the risk-coverage curve (selective prediction)"),
                     ("worst_group_gap", "best minus worst subgroup value of the task metric")):
    register_metric_info(_name, higher_is_better=False, description=_desc)

PARAMS = {"protocol", "corruptions", "severities", "subgroups", "in_site", "site_shift", "epochs", "lr"}


def _record(report: Any, metric: str, value: float, low: float | None, high: float | None,
            config: dict[str, Any]) -> Any:
    from medvl.evaluate.results import MetricRecord

    ok = low is not None and high is not None and not (math.isnan(low) or math.isnan(high))
    return MetricRecord(model=report.model, task="trust", dataset=report.dataset, split=report.split, metric=metric,
                        value=value, ci_low=low if ok else None, ci_high=high if ok else None, n=report.n,
                        n_groups=report.n_groups, config=config, label_task=report.label_task)


def summary_records(report: Any, card_href: str) -> list[Any]:
    """The leaderboard rows of one robustness report (see the module doc)."""
    cfg = {"protocol": report.protocol, "model_card": card_href, "n_boot": report.config.get("n_boot")}
    recs = [_record(report, report.metric, report.clean.value, report.clean.low, report.clean.high, cfg)]
    if report.cells:
        recs.append(_record(report, "mean_relative_drop", report.mean_relative_drop, None, None, cfg))
    drops = [s for s in report.sites if s.drop is not None]
    if drops:
        worst = max(drops, key=lambda s: s.drop.value)
        recs.append(_record(report, "worst_site_drop", worst.drop.value, worst.drop.low, worst.drop.high,
                            {**cfg, "site": worst.site}))
    cal = report.calibration
    if cal is not None:
        for name, iv in (("ece", cal.before["ece"]), ("ece_ts", cal.after["ece"]), ("aurc", cal.before["aurc"])):
            recs.append(_record(report, name, iv.value, iv.low, iv.high, cfg))
    gaps = [g for g in report.subgroups if g.gap is not None]
    if gaps:
        g = max(gaps, key=lambda x: x.gap.value)
        recs.append(_record(report, "worst_group_gap", g.gap.value, g.gap.low, g.gap.high,
                            {**cfg, "column": g.column, "worst": g.worst}))
    return recs


# deterministic: one run per model (the suite's first seed). The seed only moves the corruption noise and
# the bootstrap (and the fine-tuning init for protocol finetune); a card per seed would triple the cost.
@register_task("trust", params=PARAMS, headline="auroc", deterministic=True)
def run(ctx: TaskContext) -> list[EvalResult]:
    """Corruptions, site shift, subgroups, calibration (+ prompts, confusable pairs): one model card per model."""
    from medvl.bench.model_card import slug, write_model_card
    from medvl.evaluate.corruptions import SEVERITIES
    from medvl.evaluate.results import EvalResult
    from medvl.evaluate.robustness import robustness_eval

    p = ctx.params
    ft = {k: p[k] for k in ("epochs", "lr") if k in p}
    report = robustness_eval(ctx.encoder_spec, ctx.manifest_path, p.get("protocol", "linear-probe"), ctx.split,
                             corruptions=p.get("corruptions"), severities=list(p.get("severities", SEVERITIES)),
                             subgroups=list(p.get("subgroups", [])), in_site=p.get("in_site"),
                             site_shift=bool(p.get("site_shift", True)), n_boot=ctx.suite.bootstrap, seed=ctx.seed,
                             device=ctx.device, cache_dir=ctx.cache_dir, finetune_options=ft,
                             model_name=ctx.job.model, encoder_kwargs=ctx.encoder_options)
    bench_dir = ctx.out_dir.parent
    stem = slug(f"{ctx.job.model}-{ctx.job.task.name}-{ctx.job.task.dataset}-seed{ctx.seed}")
    paths = write_model_card(report, bench_dir / "cards", stem=stem)
    href = str(paths[1].relative_to(bench_dir))
    return [EvalResult(records=summary_records(report, href), predictions=report.predictions)]
