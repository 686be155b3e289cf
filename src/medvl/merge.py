"""Weight-space model merging: WiSE-FT interpolation and task arithmetic of medvl checkpoints.

Why: fine-tuning a foundation model on one dataset often costs robustness elsewhere; WiSE-FT
(Wortsman et al. 2022) showed that simply interpolating the weights of the zero-shot and the
fine-tuned model, ``(1 - alpha) A + alpha B``, keeps most of the in-distribution gain while
recovering much of the robustness. Task arithmetic (Ilharco et al. 2023; MedSAMix and T3 in the
medical literature) adds a *task vector* ``B - base`` to another model: ``A + alpha (B - base)``.
Both only make sense between checkpoints of the same architecture, so the tensors' names and
shapes are checked first and a mismatch is one clear :class:`~medvl.errors.CheckpointError`.

Floating-point tensors are merged; integer buffers (counters, position ids) are taken from A.
Each merged checkpoint is a normal medvl checkpoint (``weights.safetensors`` + A's
``config.yaml`` with a ``merge:`` section recording the inputs), so every evaluator and
``medvl eval robustness`` read it like any other. :func:`wise_curve` evaluates a list of merged
checkpoints (in-distribution vs shifted metric over alpha) for the model card.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from medvl.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


def _read(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict and config document of a medvl checkpoint (clear error when it is not one)."""
    from safetensors.torch import load_file

    from medvl.models.serialization import CONFIG_NAME, WEIGHTS_NAME, read_checkpoint_config

    directory = Path(directory)
    read_checkpoint_config(directory)  # raises CheckpointError naming the folder when it is not a checkpoint
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise CheckpointError(f"{weights}: corrupt or unreadable safetensors file: {exc}") from exc
    return state, yaml.safe_load((directory / CONFIG_NAME).read_text())


def _architecture(cfg: dict[str, Any]) -> str:
    m = cfg.get("model", {})
    img = (m.get("image") or {}).get("name", "?") if isinstance(m.get("image"), dict) else "?"
    txt = (m.get("text") or {}).get("name", "?") if isinstance(m.get("text"), dict) else "?"
    return f"image {img}, text {txt}"


def check_same_architecture(sa: dict[str, torch.Tensor], sb: dict[str, torch.Tensor], name_a: str, name_b: str,
                            arch_a: str = "", arch_b: str = "") -> None:
    """Raise one :class:`CheckpointError` line when two state dicts cannot be merged tensor by tensor."""
    only_a, only_b = sorted(set(sa) - set(sb)), sorted(set(sb) - set(sa))
    shape = [k for k in sa if k in sb and sa[k].shape != sb[k].shape]
    if not (only_a or only_b or shape):
        return
    why = []
    if only_a or only_b:
        why.append(f"{len(only_a)} tensors only in A (e.g. {only_a[0] if only_a else '-'}), {len(only_b)} only in B "
                   f"(e.g. {only_b[0] if only_b else '-'})")
    if shape:
        k = shape[0]
        why.append(f"{len(shape)} shape mismatches (e.g. {k}: {tuple(sa[k].shape)} vs {tuple(sb[k].shape)})")
    archs = f" ({arch_a} vs {arch_b})" if arch_a and arch_b and arch_a != arch_b else ""
    raise CheckpointError(f"cannot merge {name_a} and {name_b}: different architectures{archs}: {'; '.join(why)}")


def merge_states(sa: dict[str, torch.Tensor], sb: dict[str, torch.Tensor], alpha: float,
                 base: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``(1 - alpha) A + alpha B``, or ``A + alpha (B - base)`` with ``base``; non-float tensors from A."""
    out = {}
    for k, a in sa.items():
        b = sb[k]
        if not a.is_floating_point():
            out[k] = a.clone()
            continue
        af, bf = a.double(), b.double()
        if base is None:
            m = (1 - alpha) * af + alpha * bf
        else:
            m = af + alpha * (bf - base[k].double())
        out[k] = m.to(a.dtype).contiguous()
    return out


def merge_checkpoints(a: str | Path, b: str | Path, alphas: Sequence[float], out: str | Path,
                      base: str | Path | None = None) -> list[tuple[float, Path]]:
    """Write one merged checkpoint per alpha under ``out`` (``alpha_0.25/``...); returns (alpha, folder)."""
    from safetensors.torch import save_file

    from medvl.models.serialization import CONFIG_NAME, WEIGHTS_NAME, _atomic_write

    if not alphas:
        raise ConfigError("--alpha: give at least one value, e.g. 0,0.5,1")
    bad = [x for x in alphas if not math.isfinite(x)]
    if bad:
        raise ConfigError(f"--alpha: values must be finite numbers, got {bad}")
    sa, ca = _read(a)
    sb, cb = _read(b)
    check_same_architecture(sa, sb, str(a), str(b), _architecture(ca), _architecture(cb))
    sbase = None
    if base is not None:
        sbase, cbase = _read(base)
        check_same_architecture(sa, sbase, str(a), str(base), _architecture(ca), _architecture(cbase))
    notes = []
    if ca.get("model") != cb.get("model"):
        notes.append("A and B configs differ beyond the weights' shapes (e.g. tokenizer); the merge uses A's")
        log.warning("merge: %s", notes[-1])
    out = Path(out)
    written = []
    for alpha in alphas:
        state = merge_states(sa, sb, float(alpha), sbase)
        folder = out / f"alpha_{alpha:g}"
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / WEIGHTS_NAME, lambda tmp, s=state: save_file(s, tmp, metadata={"format": "pt"}))
        doc = {k: v for k, v in ca.items() if k != "merge"}
        doc["merge"] = {"method": "task-arithmetic" if base is not None else "wise-ft", "alpha": float(alpha),
                        "a": str(a), "b": str(b), "base": str(base) if base is not None else None, "notes": notes}
        text = yaml.safe_dump(doc, sort_keys=False, width=1_000_000)
        _atomic_write(folder / CONFIG_NAME, lambda tmp, t=text: Path(tmp).write_text(t))
        written.append((float(alpha), folder))
    return written


def load_wise_curve(path: str | Path) -> list[dict[str, Any]]:
    """Rows written by ``medvl merge --data`` (``wise.json``), checked so a wrong file is one clear line."""
    import json

    from medvl.errors import MedvlError

    path = Path(path)
    if not path.is_file():
        raise MedvlError(f"--wise: file not found: {path}")
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MedvlError(f"--wise: {path} is not JSON ({exc.msg}, line {exc.lineno})") from exc
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and "alpha" in r and
                                                         "in_distribution" in r for r in rows):
        raise MedvlError(f"--wise: {path} is not a wise.json of `medvl merge --data` (rows with alpha, "
                         "in_distribution)")
    return rows


def wise_curve(checkpoints: Sequence[tuple[float, str | Path]], data: str | Path, protocol: str = "zeroshot",
               corruptions: Sequence[str] = ("gaussian_noise", "contrast"), severities: Sequence[int] = (3,),
               in_site: str | None = None, n_boot: int = 200, seed: int = 0, device: str = "cpu",
               cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """In-distribution vs shifted metric for each (alpha, checkpoint): the WiSE-FT curve.

    In-distribution = the in-site test score (the whole clean test set when there is one site);
    shifted = the mean over the other sites and the mean over the corrupted cells.
    """
    from medvl.evaluate.robustness import robustness_eval

    rows = []
    for alpha, ckpt in checkpoints:
        r = robustness_eval(str(ckpt), data, protocol, corruptions=list(corruptions), severities=list(severities),
                            in_site=in_site, n_boot=n_boot, seed=seed, device=device, cache_dir=cache_dir,
                            model_name=f"alpha={alpha:g}", extras=())
        ins = [s for s in r.sites if s.role == "in"]
        shifted = [s for s in r.sites if s.role == "shift"]
        shift = [s.value.value for s in shifted]
        cor = [c.value.value for c in r.cells]
        ind = ins[0].value if ins else r.clean

        def ci(iv: Any) -> list[float] | None:
            return None if iv is None or math.isnan(iv.low) else [iv.low, iv.high]

        rows.append({"alpha": float(alpha), "metric": r.metric, "clean": r.clean.value, "clean_ci": ci(r.clean),
                     "in_distribution": ind.value, "in_distribution_ci": ci(ind),
                     "shifted_sites": float(sum(shift) / len(shift)) if shift else None,
                     "shifted_sites_ci": ci(shifted[0].value) if len(shifted) == 1 else None,
                     "corrupted": float(sum(cor) / len(cor)) if cor else None, "checkpoint": str(ckpt)})
    return rows
