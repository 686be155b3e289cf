"""Bench task ``robustness``: a linear probe trained on one site, tested on that site and on every other one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from medvl.bench.tasks.registry import TaskContext, register_task, subset_features, tag_variant
from medvl.errors import ConfigError

if TYPE_CHECKING:
    from medvl.evaluate.features import Features
    from medvl.evaluate.results import EvalResult


@register_task("robustness", params={"in_site", "fractions"}, headline="auroc")
def run(ctx: TaskContext) -> list[EvalResult]:
    """Site shift: results tagged ``in:<site>`` (the training site) and ``shift:<site>`` (each other site)."""
    from medvl.evaluate.linear_probe import linear_probe_features

    inputs = ctx.inputs()
    test = ctx.feats(ctx.split)
    site_of = {s.row: s.site for s in inputs.manifest.samples}
    in_site = ctx.params.get("in_site")
    sites = sorted({site_of[int(r)] for r in test.rows})
    if in_site is None:
        in_site = sites[0] if sites else ""
    if in_site not in sites or len(sites) < 2:
        raise ConfigError(f"robustness: needs site {in_site!r} and at least one other site in split "
                          f"{ctx.split!r}; sites present: {', '.join(map(repr, sites)) or '(none)'}")

    def on_site(f: Features, site: str, same: bool = True) -> Features:
        mask = np.array([(site_of[int(r)] == site) == same for r in f.rows])
        return subset_features(f, mask)

    train = on_site(ctx.feats("train"), in_site)
    val = ctx.val_or_none()
    val = on_site(val, in_site) if val is not None else None
    fractions = list(ctx.params.get("fractions", [1.0]))[:1]
    results: list[EvalResult] = []
    for site in sites:
        part = on_site(test, site)
        tag = f"in:{site}" if site == in_site else f"shift:{site}"
        res = linear_probe_features(train, val, part, inputs.task, inputs.classes, fractions=fractions,
                                    seeds=[ctx.seed], device=ctx.device, split=ctx.split, **ctx.common)
        results += tag_variant(res, tag)
    return results
