"""Report metrics: equal to pycocoevalcap (the field's reference code) within 1e-6 on the same tokens,
hand-checkable small cases, and clinical efficacy counting."""

from __future__ import annotations

import math
import random

import pytest

from medvl.text.metrics import bleu, bleu_from_stats, cider_d, clinical_efficacy, rouge_l, tokenize

REFS = [
    "The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
    "Mild cardiomegaly. Small left pleural effusion with adjacent atelectasis.",
    "No acute cardiopulmonary abnormality. Stable 2.5 cm nodule in the right upper lobe.",
    "Lungs are hyperinflated, compatible with emphysema. No focal consolidation.",
    "There is a right lower lobe opacity concerning for pneumonia. Heart size is normal.",
    "Interval removal of the right internal jugular catheter. No pneumothorax.",
]


def _pairs(n: int = 60, seed: int = 0) -> tuple[list[str], list[str]]:
    """Generated/reference pairs: shuffled, truncated, word-dropped and copied references (fixed seed)."""
    rng = random.Random(seed)
    refs, preds = [], []
    for i in range(n):
        ref = REFS[i % len(REFS)] + (" Follow-up advised." if i % 4 == 0 else "")
        words = ref.split()
        kind = i % 4
        if kind == 0:
            pred = ref
        elif kind == 1:
            pred = " ".join(w for w in words if rng.random() > 0.3)
        elif kind == 2:
            pred = REFS[(i + 1) % len(REFS)]
        else:
            pred = " ".join(words[: max(1, len(words) // 2)])
        refs.append(ref)
        preds.append(pred)
    return preds, refs


def test_tokenizer() -> None:
    assert tokenize("Stable 2.5 cm nodule. XXXX, left-sided; patient's") == [
        "stable", "2.5", "cm", "nodule", "xxxx", "left", "sided", "patient's"]


def test_equal_to_pycocoevalcap() -> None:
    pytest.importorskip("pycocoevalcap", reason="pycocoevalcap (dev extra) is the reference implementation")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    preds, refs = _pairs()
    gts = {i: [" ".join(tokenize(r))] for i, r in enumerate(refs)}
    res = {i: [" ".join(tokenize(p))] for i, p in enumerate(preds)}
    b_ref, b_ref_ps = Bleu(4).compute_score(gts, res, verbose=0)
    r_ref, r_ref_ps = Rouge().compute_score(gts, res)
    c_ref, c_ref_ps = Cider().compute_score(gts, res)
    b = bleu(preds, refs)
    for k in range(4):
        assert b[f"bleu{k + 1}"] == pytest.approx(b_ref[k], abs=1e-6)
        assert b["per_sample"][f"bleu{k + 1}"] == pytest.approx(list(b_ref_ps[k]), abs=1e-6)
    r = rouge_l(preds, refs)
    assert r["rouge_l"] == pytest.approx(r_ref, abs=1e-6)
    assert r["per_sample"] == pytest.approx(list(r_ref_ps), abs=1e-6)
    c = cider_d(preds, refs)
    assert c["cider_d"] == pytest.approx(c_ref, abs=1e-6)
    assert c["per_sample"] == pytest.approx(list(c_ref_ps), abs=1e-6)
    # several references per sample, too
    multi = [[refs[i], refs[(i + 3) % len(refs)]] for i in range(len(refs))]
    gts2 = {i: [" ".join(tokenize(x)) for x in rs] for i, rs in enumerate(multi)}
    assert bleu(preds, multi)["bleu4"] == pytest.approx(Bleu(4).compute_score(gts2, res, verbose=0)[0][3], abs=1e-6)
    assert cider_d(preds, multi)["cider_d"] == pytest.approx(Cider().compute_score(gts2, res)[0], abs=1e-6)
    assert rouge_l(preds, multi)["rouge_l"] == pytest.approx(Rouge().compute_score(gts2, res)[0], abs=1e-6)


def test_hand_checked_values() -> None:
    b = bleu(["the cat sat"], ["the cat sat"])
    # no 4-gram in 3 words: pycocoevalcap's smoothing gives (1e-15 / 1e-9) ** (1/4), not 0
    assert b["bleu1"] == pytest.approx(1.0) and b["bleu4"] == pytest.approx((1e-15 / 1e-9) ** 0.25, rel=1e-5)
    b = bleu(["a b"], ["a b c d"])  # precision 1, brevity penalty exp(1 - 4/2)
    assert b["bleu1"] == pytest.approx(math.exp(-1.0), rel=1e-6)
    # ROUGE-L: LCS 2 of "a x b" vs "a b": P = 2/3, R = 1, F(beta=1.2)
    p, r, beta = 2 / 3, 1.0, 1.2
    assert rouge_l(["a x b"], ["a b"])["rouge_l"] == pytest.approx((1 + beta**2) * p * r / (r + beta**2 * p))
    assert rouge_l([""], ["a b"])["rouge_l"] == 0.0
    stats = bleu(["a b c", "a b"], ["a b c", "a b d"])["stats"]
    assert bleu_from_stats(stats) == pytest.approx([bleu(["a b c", "a b"], ["a b c", "a b d"])[f"bleu{k}"]
                                                    for k in range(1, 5)])
    # CIDEr-D: identical pairs score higher than a swapped one
    c = cider_d(["no effusion", "mild cardiomegaly", "clear lungs"],
                ["no effusion", "mild cardiomegaly", "no effusion"])
    assert c["per_sample"][0] > c["per_sample"][2] and len(c["per_sample"]) == 3
    with pytest.raises(ValueError, match="2 predictions but 1"):
        bleu(["a", "b"], ["a"])


def test_clinical_efficacy_counts() -> None:
    ref = [{"Edema": 1.0, "Pneumothorax": 0.0}, {"Edema": 1.0, "Pneumothorax": 1.0}, {"Edema": None,
                                                                                        "Pneumothorax": -1.0}]
    pred = [{"Edema": 1.0, "Pneumothorax": 1.0}, {"Edema": -1.0, "Pneumothorax": 1.0}, {"Edema": 1.0,
                                                                                         "Pneumothorax": None}]
    ce = clinical_efficacy(pred, ref)
    assert ce["counts"] == {"Edema": [1, 1, 1], "Pneumothorax": [1, 1, 0]}
    assert ce["precision_micro"] == pytest.approx(2 / 4) and ce["recall_micro"] == pytest.approx(2 / 3)
    assert ce["per_class"]["Pneumothorax"]["f1"] == pytest.approx(2 / 3)
    assert ce["f1_macro"] == pytest.approx((0.5 + 2 / 3) / 2)
    up = clinical_efficacy(pred, ref, uncertain_as="positive")  # -1 counts as positive
    assert up["counts"]["Edema"] == [2, 1, 0] and up["counts"]["Pneumothorax"] == [1, 1, 1]
    empty = clinical_efficacy([{"Edema": 0.0}], [{"Edema": None}])
    assert math.isnan(empty["per_class"]["Edema"]["f1"]) and math.isnan(empty["f1_macro"])


def test_ce_macro_counts_never_predicted_present_classes_as_zero() -> None:
    ref = [{"No Finding": 1.0, "Edema": None}, {"No Finding": None, "Edema": 1.0}, {"No Finding": None, "Edema": None}]
    pred = [{"No Finding": 1.0, "Edema": None}] * 3  # a constant "normal" report
    ce = clinical_efficacy(pred, ref, classes=["No Finding", "Edema", "Fracture"])
    assert ce["precision_micro"] == pytest.approx(1 / 3)
    assert math.isnan(ce["per_class"]["Edema"]["precision"])  # undefined per class ...
    assert ce["precision_macro"] == pytest.approx((1 / 3 + 0.0) / 2)  # ... 0 in the macro; Fracture absent: left out
    assert ce["recall_macro"] == pytest.approx(0.5) and ce["f1_macro"] == pytest.approx(0.25)
