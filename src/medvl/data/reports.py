"""Radiology report text from phantom ground truth: ``FINDINGS: ... IMPRESSION: ...``.

Why so much variation: a text tower should learn what a report *says* -- which finding, which
side, present or negated, certain or hedged -- not memorise one template. So every positive
finding is verbalised with its side / zone / size / lobe through one of several phrasings and
synonyms; absent findings are often (not always) negated explicitly, sometimes on the opposite
side of a present one ("No right pleural effusion."); subtle findings are hedged ("possible");
follow-up studies mention resolved findings, which name a finding that is *absent*. Sentence
order varies, so a bag of label names in a fixed order never appears.

Side words always refer to the patient's side (see :mod:`medvl.data.phantom_anatomy`). A report
is one line (no newline) so that any CSV reader and tokenizer handles it.
"""

from __future__ import annotations

import numpy as np

from medvl.data.phantom_anatomy import Consolidation, Effusion, Nodule, Phantom, Pneumothorax

__all__ = ["render_report", "OTHER_SIDE"]

OTHER_SIDE = {"left": "right", "right": "left"}


def _pick(rng: np.random.Generator, options: list[str] | tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _chance(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


# ----------------------------------------------------------------------------- positive findings
def _nodule(n: Nodule, rng: np.random.Generator, prior: Nodule | None) -> tuple[str, str]:
    """(findings sentence, impression phrase) for a nodule; mentions only its own side."""
    side, zone, mm = n.side, n.zone, n.size_mm
    if n.subtle:
        finding = _pick(rng, [
            f"Possible small nodule in the {side} {zone} zone, approximately {mm} mm.",
            f"Questionable {mm} mm nodular opacity in the {side} {zone} zone.",
            f"Faint rounded density in the {side} {zone} zone may represent a {mm} mm nodule.",
            f"Possible {mm} mm nodule projecting over the {side} {zone} lung zone.",
        ])
        impression = _pick(rng, [
            f"Possible {side} {zone} zone nodule; consider CT for further evaluation.",
            f"Questionable small {side} pulmonary nodule.",
            f"Possible {mm} mm {side} lung nodule.",
        ])
        return finding, impression
    if prior is not None and _chance(rng, 0.6):
        finding = (f"Stable {mm} mm nodule in the {side} {zone} zone compared with the prior study."
                   if prior.size_mm >= mm else
                   f"The {side} {zone} zone nodule has increased from {prior.size_mm} to {mm} mm.")
    else:
        finding = _pick(rng, [
            f"There is a {mm} mm nodule in the {side} {zone} zone.",
            f"A {mm} mm nodular opacity projects over the {side} {zone} zone.",
            f"A well-circumscribed {mm} mm pulmonary nodule is seen in the {side} {zone} lung zone.",
            f"{_cap(side)} {zone} zone {mm} mm nodule.",
            f"There is a {mm} mm rounded density in the {side} {zone} zone, consistent with a nodule.",
        ])
    impression = _pick(rng, [
        f"{_cap(side)} {zone} zone pulmonary nodule ({mm} mm); CT recommended for characterisation.",
        f"{mm} mm {side} lung nodule.",
        f"Pulmonary nodule in the {side} {zone} zone.",
        f"{_cap(side)} {zone} zone nodule measuring {mm} mm.",
    ])
    return finding, impression


def _effusion(e: Effusion, rng: np.random.Generator) -> tuple[str, str]:
    side, amount = e.side, e.amount
    if e.subtle:
        return (_pick(rng, [
            f"Minimal blunting of the {side} costophrenic angle, possibly a trace effusion.",
            f"Possible small {side} pleural effusion.",
            f"Questionable small amount of {side} pleural fluid.",
        ]), _pick(rng, [
            f"Possible small {side} pleural effusion.",
            f"Probable trace {side} effusion.",
        ]))
    options = [
        f"{_cap(amount)} {side} pleural effusion.",
        f"There is a {amount} {side} pleural effusion.",
        f"{_cap(amount)} amount of {side} pleural fluid with a meniscus.",
        f"{_cap(amount)} {side}-sided effusion.",
    ]
    if amount == "small":
        options += [f"Blunting of the {side} costophrenic angle, consistent with a small effusion."]
    if amount == "large":
        options += [f"Large {side} pleural effusion opacifying the lower {side} hemithorax."]
    return _pick(rng, options), _pick(rng, [
        f"{_cap(amount)} {side} pleural effusion.",
        f"{_cap(side)} pleural fluid, {amount}.",
        f"{_cap(amount)} {side} effusion.",
    ])


def _pneumothorax(p: Pneumothorax, rng: np.random.Generator) -> tuple[str, str]:
    side, size = p.side, p.size
    if p.subtle:
        return (_pick(rng, [
            f"Possible tiny {side} apical pneumothorax.",
            f"Questionable thin pleural line at the {side} apex, which may represent a small pneumothorax.",
            f"Subtle lucency along the {side} lateral chest wall, possibly a small pneumothorax.",
        ]), _pick(rng, [
            f"Possible small {side} pneumothorax; short-interval follow-up suggested.",
            f"Questionable tiny {side} pneumothorax.",
        ]))
    return _pick(rng, [
        f"{_cap(size)} {side} pneumothorax with a visible pleural line.",
        f"There is a {size} {side} apical pneumothorax.",
        f"A visceral pleural line is seen in the {side} hemithorax with absent lung markings peripherally, "
        f"consistent with a {size} pneumothorax.",
        f"{_cap(size)} {side} pneumothorax; the {side} lung is partially collapsed.",
        f"Partially collapsed {side} lung from a {size} pneumothorax.",
    ]), _pick(rng, [
        f"{_cap(size)} {side} pneumothorax.",
        f"{_cap(side)} pneumothorax, {size}.",
        f"{_cap(size)} {side} pneumothorax with partial collapse of the {side} lung.",
    ])


def _consolidation(c: Consolidation, rng: np.random.Generator) -> tuple[str, str]:
    lobe = c.lobe
    if c.subtle:
        return (_pick(rng, [
            f"Subtle hazy opacity in the {lobe}, possibly early consolidation.",
            f"Faint increased density in the {lobe}, which may represent early airspace disease.",
            f"Possible patchy opacity in the {lobe}.",
        ]), _pick(rng, [
            f"Possible early {lobe} consolidation.",
            f"Questionable {lobe} airspace opacity; correlate clinically.",
        ]))
    return _pick(rng, [
        f"Patchy airspace opacity in the {lobe}.",
        f"Consolidation in the {lobe}.",
        f"There is focal consolidation involving the {lobe}.",
        f"{_cap(lobe)} airspace disease.",
        f"Ill-defined opacity in the {lobe}, consistent with consolidation.",
    ]), _pick(rng, [
        f"{_cap(lobe)} consolidation, likely pneumonia in the appropriate clinical setting.",
        f"Airspace opacity in the {lobe}.",
        f"{_cap(lobe)} pneumonia.",
        f"Consolidation of the {lobe}.",
    ])


def _heart(ph: Phantom, rng: np.random.Generator, prior: Phantom | None) -> tuple[str, str | None]:
    """Heart size is always described; the CTR is quoted sometimes."""
    ctr = ph.anatomy.ctr
    if not ph.cardiomegaly:
        return _pick(rng, [
            "Heart size is normal.",
            "The cardiomediastinal silhouette is within normal limits.",
            "Normal cardiac size.",
            "The heart is not enlarged.",
            "No cardiomegaly.",
        ]), None
    if ph.cardiomegaly_subtle:
        return _pick(rng, [
            "Borderline enlarged cardiac silhouette.",
            "Heart size is at the upper limit of normal to mildly enlarged.",
            f"The cardiothoracic ratio is approximately {ctr:.2f}, borderline cardiomegaly.",
        ]), _pick(rng, ["Borderline cardiomegaly.", "Possible mild cardiomegaly."])
    return _pick(rng, [
        "The heart is enlarged.",
        "Cardiomegaly.",
        "Enlarged cardiac silhouette.",
        f"The cardiac silhouette is enlarged, with a cardiothoracic ratio of {ctr:.2f}.",
        f"Cardiomegaly (cardiothoracic ratio {ctr:.2f}).",
    ]), _pick(rng, ["Cardiomegaly.", "Enlarged heart.", "Enlarged cardiac silhouette."]
               + (["Stable cardiomegaly."] if prior is not None and prior.cardiomegaly else []))


# ----------------------------------------------------------------------------- negations
def _pleural_negations(ph: Phantom, rng: np.random.Generator) -> list[str]:
    """Negate absent effusion / pneumothorax, sometimes only on the side opposite a present one."""
    eff, ptx = ph.effusion, ph.pneumothorax
    if eff is None and ptx is None:
        if not _chance(rng, 0.8):
            return []
        return [_pick(rng, [
            "No pleural effusion or pneumothorax.",
            "No effusion or pneumothorax.",
            "There is no pleural effusion or pneumothorax.",
            "No pneumothorax or pleural effusion.",
            "The costophrenic angles are sharp and there is no pneumothorax.",
            "No pleural fluid. No pneumothorax.",
        ])]
    out = []
    if eff is None and _chance(rng, 0.6):
        out.append(_pick(rng, ["No pleural effusion.", "No effusion.", "No pleural fluid."]))
    elif eff is not None and _chance(rng, 0.3):
        other = OTHER_SIDE[eff.side]
        out.append(_pick(rng, [f"No {other} pleural effusion.", f"The {other} costophrenic angle is sharp."]))
    if ptx is None and _chance(rng, 0.6):
        out.append(_pick(rng, ["No pneumothorax.", "No evidence of pneumothorax.", "No pneumothorax is identified."]))
    elif ptx is not None and _chance(rng, 0.3):
        out.append(f"No {OTHER_SIDE[ptx.side]} pneumothorax.")
    return out


def _parenchyma_negations(ph: Phantom, rng: np.random.Generator) -> list[str]:
    out = []
    if ph.consolidation is None and _chance(rng, 0.65):
        options = ["No focal consolidation.", "No airspace opacity.", "No focal airspace disease.", "No consolidation."]
        if ph.nodule is None:
            options.append("The lungs are clear.")
        out.append(_pick(rng, options))
    elif ph.consolidation is not None and _chance(rng, 0.3):
        out.append(f"The {OTHER_SIDE[ph.consolidation.side]} lung is clear.")
    if ph.nodule is None and _chance(rng, 0.35):
        out.append(_pick(rng, ["No suspicious pulmonary nodule.", "No nodule or mass.", "No focal nodular opacity."]))
    return out


def _resolved(ph: Phantom, prior: Phantom | None, rng: np.random.Generator) -> list[str]:
    """Follow-ups name findings that have gone: the words appear, the label is negative."""
    if prior is None:
        return []
    out = []
    if prior.effusion and not ph.effusion and _chance(rng, 0.6):
        out.append(f"Interval resolution of the previously seen {prior.effusion.side} pleural effusion.")
    if prior.pneumothorax and not ph.pneumothorax and _chance(rng, 0.6):
        out.append(f"The previously noted {prior.pneumothorax.side} pneumothorax has resolved.")
    if prior.consolidation and not ph.consolidation and _chance(rng, 0.6):
        out.append(f"Previously seen {prior.consolidation.lobe} consolidation has cleared.")
    return out


# ----------------------------------------------------------------------------- assembly
_NORMAL_IMPRESSIONS = [
    "No acute cardiopulmonary process.",
    "Normal chest radiograph.",
    "No acute cardiopulmonary abnormality.",
    "No radiographic evidence of acute disease.",
    "Clear lungs and normal heart size.",
    "Normal study.",
]
_BONES = ["The osseous structures are unremarkable.", "No acute osseous abnormality.",
          "Visualised bones are intact."]


def _positives(ph: Phantom, prior: Phantom | None, rng: np.random.Generator) -> list[tuple[str, str]]:
    pairs = []
    if ph.nodule:
        pairs.append(_nodule(ph.nodule, rng, prior.nodule if prior else None))
    if ph.effusion:
        pairs.append(_effusion(ph.effusion, rng))
    if ph.pneumothorax:
        pairs.append(_pneumothorax(ph.pneumothorax, rng))
    if ph.consolidation:
        pairs.append(_consolidation(ph.consolidation, rng))
    return pairs


def _impression(phrases: list[str], rng: np.random.Generator) -> str:
    if not phrases:
        return _pick(rng, _NORMAL_IMPRESSIONS)
    order = [phrases[i] for i in rng.permutation(len(phrases))]
    if len(order) > 1 and _chance(rng, 0.3):
        return " ".join(f"{i}. {p}" for i, p in enumerate(order, start=1))
    return " ".join(order)


def render_report(ph: Phantom, rng: np.random.Generator, prior: Phantom | None = None) -> str:
    """One report for a phantom; ``prior`` (the patient's previous study) enables comparison wording."""
    pairs = _positives(ph, prior, rng)
    heart, heart_impression = _heart(ph, rng, prior)
    body = [p[0] for p in pairs] + _pleural_negations(ph, rng) + _parenchyma_negations(ph, rng)
    body = [body[i] for i in rng.permutation(len(body))]
    body.insert(0 if _chance(rng, 0.5) else len(body), heart)
    body = _resolved(ph, prior, rng) + body
    if prior is not None and _chance(rng, 0.5):
        body.insert(0, _pick(rng, ["Comparison is made with the prior radiograph.", "Compared with the prior study."]))
    if _chance(rng, 0.4):
        body.append(_pick(rng, _BONES))
    phrases = [p[1] for p in pairs] + ([heart_impression] if heart_impression else [])
    return f"FINDINGS: {' '.join(body)} IMPRESSION: {_impression(phrases, rng)}"
