"""Phantom visual question answering: questions the phantom ground truth answers (``medvl data synth --vqa``).

Why: VQA scoring must run in tests and demos without downloads, and the questions must have
one right answer. The phantoms know every finding, its side, size and the patient's previous
study, so we ask:

* ``presence`` (closed, yes/no): "Is there a pleural effusion?" for every finding class;
* ``laterality`` (closed, left/right, the *patient's* side): "On which side is the pneumothorax?";
* ``size`` (closed): effusion amount and pneumothorax size (small/moderate/large), nodule > 10 mm;
* ``count`` (closed, 0-5): "How many abnormal findings are there?";
* ``change`` (closed, new/unchanged/resolved, follow-up studies only): "Compared with the prior
  study, is the consolidation new, unchanged or resolved?" -- the prior image is named in
  ``prior_image`` (a single-image model cannot see it, which is the point of asking);
* ``finding`` (open): "What abnormalities are seen?" -> "nodule, pleural effusion" / "no finding".

MediConfusion-style pairs (Sepehri et al. 2024): for some studies a *twin* image is rendered
from the same phantom and the same random stream with one change -- a lateralised finding moved
to the other side, or a finding removed -- and the same question is asked of both images, whose
answers differ. Rows of a pair share ``pair_id``; :mod:`medvl.evaluate.vqa` reports pair
accuracy (both right), which a model answering from priors cannot pass.

Output (beside the phantom manifest): ``vqa.csv`` with ``image, question, answer, answer_type,
question_type, candidates`` (``|``-separated allowed answers), ``id``, ``split``, ``patient_id``,
``study_id``, ``pair_id``, ``prior_image``; twin images in ``images/<study>_twin_<change>.png``.
The ground truth is rebuilt from the card's generator settings (the cohort is a pure function of
them) and checked against the manifest, so an edited manifest is refused, never mis-labelled.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvl.data.manifest import load_manifest, write_manifest
from medvl.data.phantom_anatomy import Phantom
from medvl.errors import ManifestError

FINDINGS = ("nodule", "pleural effusion", "pneumothorax", "consolidation", "cardiomegaly")
_ATTR = {"nodule": "nodule", "pleural effusion": "effusion", "pneumothorax": "pneumothorax",
         "consolidation": "consolidation"}
YES_NO = ("yes", "no")
SIDES = ("left", "right")
SIZES = ("small", "moderate", "large")
CHANGES = ("new", "unchanged", "resolved")
COUNTS = tuple(str(i) for i in range(6))
VQA_FILE = "vqa.csv"


def present(ph: Phantom, finding: str) -> bool:
    return ph.cardiomegaly if finding == "cardiomegaly" else getattr(ph, _ATTR[finding]) is not None


def side_of(ph: Phantom, finding: str) -> str | None:
    item = getattr(ph, _ATTR.get(finding, ""), None)
    return None if item is None else str(item.side)


def _closed(question: str, answer: str, qtype: str, candidates: tuple[str, ...]) -> dict[str, Any]:
    assert answer in candidates, (question, answer)
    return {"question": question, "answer": answer, "answer_type": "closed", "question_type": qtype,
            "candidates": "|".join(candidates)}


def questions_for(ph: Phantom, prior: Phantom | None) -> list[dict[str, Any]]:
    """Every question this phantom answers (see the module docstring)."""
    out = []
    for f in FINDINGS:
        out.append(_closed(f"Is there {'an enlarged heart' if f == 'cardiomegaly' else 'a ' + f}?",
                           "yes" if present(ph, f) else "no", "presence", YES_NO))
    for f in ("nodule", "pleural effusion", "pneumothorax", "consolidation"):
        side = side_of(ph, f)
        if side in SIDES:
            out.append(_closed(f"On which side is the {f}?", side, "laterality", SIDES))
    if ph.effusion is not None and ph.effusion.amount in SIZES:
        out.append(_closed("How large is the pleural effusion?", ph.effusion.amount, "size", SIZES))
    if ph.pneumothorax is not None and ph.pneumothorax.size in SIZES:
        out.append(_closed("How large is the pneumothorax?", ph.pneumothorax.size, "size", SIZES))
    if ph.nodule is not None:
        out.append(_closed("Is the nodule larger than 10 mm?", "yes" if ph.nodule.size_mm > 10 else "no", "size",
                           YES_NO))
    n = sum(present(ph, f) for f in FINDINGS)
    out.append(_closed("How many abnormal findings are there?", str(n), "count", COUNTS))
    if prior is not None:
        for f in FINDINGS:
            now, before = present(ph, f), present(prior, f)
            if now or before:
                change = "unchanged" if now and before else ("new" if now else "resolved")
                out.append(_closed(f"Compared with the prior study, is the {f} new, unchanged or resolved?",
                                   change, "change", CHANGES))
    labels = [f for f in FINDINGS if present(ph, f)]
    out.append({"question": "What abnormalities are seen?", "answer": ", ".join(labels) or "no finding",
                "answer_type": "open", "question_type": "finding", "candidates": ""})
    return out


def twin_of(ph: Phantom, rng: np.random.Generator) -> tuple[Phantom, str, dict[str, Any]] | None:
    """A near-identical phantom with one change and the question whose answer it flips (or None)."""
    lateral = [f for f in ("pleural effusion", "pneumothorax", "nodule") if side_of(ph, f) in SIDES]
    removable = [f for f in ("pleural effusion", "pneumothorax", "nodule", "consolidation") if present(ph, f)]
    if lateral and (not removable or rng.random() < 0.5):
        f = lateral[int(rng.integers(len(lateral)))]
        other = "left" if side_of(ph, f) == "right" else "right"
        twin = replace(ph, **{_ATTR[f]: replace(getattr(ph, _ATTR[f]), side=other)})
        return twin, f"{_ATTR[f]}_{other}", _closed(f"On which side is the {f}?", other, "laterality", SIDES)
    if removable:
        f = removable[int(rng.integers(len(removable)))]
        twin = replace(ph, **{_ATTR[f]: None})
        return twin, f"no_{_ATTR[f]}", _closed(f"Is there a {f}?", "no", "presence", YES_NO)
    return None


def _cohort(manifest_path: Path) -> tuple[list[Any], dict[str, Any]]:
    from medvl.data.synthetic import parse_count_range, sample_cohort

    man = load_manifest(manifest_path)
    gen = ((man.card.extra or {}).get("generator") if man.card is not None else None) or {}
    if gen.get("module") != "medvl.data.synthetic":
        raise ManifestError(f"{manifest_path}: not a phantom dataset (its card.yaml has no medvl.data.synthetic "
                            f"generator settings); VQA questions come from the phantom ground truth")
    studies = sample_cohort(int(gen["n"]), int(gen["seed"]), int(gen["sites"]),
                            parse_count_range(gen["studies_per_patient"]))
    by_id = {s.study_id: s for s in man.samples}
    for st in studies:
        row = by_id.get(st.study_id)
        if row is None or sorted(row.positive_labels) != sorted(st.phantom.labels):
            raise ManifestError(f"{manifest_path}: study {st.study_id} differs from the generator's ground truth "
                                f"(manifest edited?); regenerate with `medvl data synth`")
    return studies, {"gen": gen, "rows": by_id}


def generate_vqa(manifest_path: str | Path, pairs: float = 0.3, seed: int = 0) -> Path:
    """Write ``vqa.csv`` (and twin images) beside a phantom manifest; returns its path.

    ``pairs`` is the share of studies that get a MediConfusion-style twin (when they have a
    finding to move or remove).
    """
    from medvl.data.phantom_anatomy import render_phantom
    from medvl.data.synthetic import apply_site

    manifest_path = Path(manifest_path)
    studies, info = _cohort(manifest_path)
    gen, rows_by_id = info["gen"], info["rows"]
    root, size, fmt = manifest_path.parent, int(gen["size"]), str(gen.get("format", "png"))
    rng = np.random.default_rng([int(gen["seed"]), 7, seed])
    out: list[dict[str, Any]] = []
    image_of = {st.study_id: rows_by_id[st.study_id].image[0] for st in studies}
    prior_id: dict[str, str] = {}
    for st in studies:
        if st.study_index > 1:
            prior_id[st.study_id] = f"{st.patient_id}_s{st.study_index - 1}"

    def emit(study_id: str, image: str, st: Any, qs: list[dict[str, Any]], pair: str = "") -> None:
        for q in qs:
            out.append({"image": image, **q, "id": f"{study_id}_q{len(out) + 1}", "split": st.split,
                        "patient_id": st.patient_id, "study_id": study_id, "pair_id": pair,
                        "prior_image": image_of.get(prior_id.get(st.study_id, ""), "")})

    for st in studies:
        emit(st.study_id, image_of[st.study_id], st, questions_for(st.phantom, st.prior))
        if rng.random() >= pairs:
            continue
        made = twin_of(st.phantom, rng)
        if made is None:
            continue
        twin, tag, twin_q = made
        r = np.random.default_rng([int(gen["seed"]), 1, st.index])  # the original's stream: same noise, anatomy
        brightness, _ = render_phantom(twin, size, r)
        rel = f"images/{st.study_id}_twin_{tag}.{fmt}"
        Image.fromarray(apply_site(brightness, st.site, r)).save(root / rel)
        pair = f"{st.study_id}:{tag}"
        for row in out[::-1]:  # the original's own row for this question joins the pair
            if row["study_id"] == st.study_id and row["question"] == twin_q["question"]:
                row["pair_id"] = pair
                break
        emit(f"{st.study_id}_twin", rel, st, [twin_q], pair)
    return write_manifest(out, root / VQA_FILE)
