"""Zero-shot and retrieval with a fake encoder whose embeddings we control (known answers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvl.data.card import ClassInfo, DatasetCard
from medvl.evaluate.features import Features
from medvl.evaluate.retrieval import retrieval_features, retrieval_per_query
from medvl.evaluate.zeroshot import class_embeddings, zeroshot_features

E = 16


class FakeEncoder:
    """Text -> embedding from a lookup table; images are given directly as features."""

    name = "fake"
    has_text = True

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table
        self.calls: list[list[str]] = []

    def encode_text(self, texts: list[str], batch_size: int = 256, normalize: bool = True) -> torch.Tensor:
        self.calls.append(list(texts))
        out = torch.tensor(np.stack([self.table[t] for t in texts]), dtype=torch.float32)
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out


def _card(task: str, names: list[str]) -> DatasetCard:
    return DatasetCard(name="toy", task=task, templates=["{label}", "a scan showing {label}"],
                       negative_templates=["no {label}"],
                       classes=[ClassInfo(n, synonyms=[f"{n} finding"]) for n in names])


def _feats(x: np.ndarray, labels: np.ndarray, texts: list[str] | None = None) -> Features:
    n = len(x)
    return Features(x=x.astype(np.float32), labels=labels.astype(np.float32), ids=np.array([f"i{i}" for i in range(n)]),
                    rows=np.arange(1, n + 1), patient_ids=np.array([f"p{i}" for i in range(n)]),
                    texts=texts or [""] * n, classes=[])


def _basis(i: int) -> np.ndarray:
    v = np.zeros(E)
    v[i] = 1
    return v


def test_prompt_ensemble_is_mean_of_normalised_then_renormalised() -> None:
    card = _card("multiclass", ["a", "b"])
    rng = np.random.default_rng(0)
    table = {p: rng.normal(size=E) * (i + 1) for i, p in enumerate(card.prompts("a") + card.prompts("b"))}
    enc = FakeEncoder(table)
    emb = class_embeddings(enc, card)
    pa = np.stack([table[p] / np.linalg.norm(table[p]) for p in card.prompts("a")]).mean(0)
    np.testing.assert_allclose(emb[0].numpy(), pa / np.linalg.norm(pa), atol=1e-6)
    assert enc.calls[0] == ["a", "a finding", "a scan showing a", "a scan showing a finding"]


def test_multiclass_perfect_alignment_gives_auroc_one() -> None:
    names = ["normal", "nodule", "mass"]
    card = _card("multiclass", names)
    table = {p: _basis(c) + 0.1 * np.random.default_rng(j).normal(size=E)
             for c, n in enumerate(names) for j, p in enumerate(card.prompts(n))}
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    x = np.stack([_basis(c) for c in y]) + 0.05 * rng.normal(size=(90, E))
    res = zeroshot_features(FakeEncoder(table), _feats(x, np.eye(3)[y]), card, names, "multiclass", n_boot=50)
    assert res.value("auroc") == pytest.approx(1.0)
    assert res.value("accuracy") == pytest.approx(1.0)
    assert res.predictions is not None and np.allclose(res.predictions.scores.sum(1), 1)


def test_binary_two_classes_uses_class_one_probability() -> None:
    names = ["benign", "malignant"]
    card = _card("binary", names)
    table = {p: _basis(c) for c, n in enumerate(names) for p in card.prompts(n)}
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 60)
    # image = mix of the two class directions: more malignant direction -> higher p(malignant)
    t = np.where(y == 1, rng.uniform(0.55, 1, 60), rng.uniform(0, 0.45, 60))
    x = np.stack([(1 - ti) * _basis(0) + ti * _basis(1) for ti in t])
    res = zeroshot_features(FakeEncoder(table), _feats(x, np.eye(2)[y]), card, names, "binary", n_boot=0)
    assert res.value("auroc") == pytest.approx(1.0)
    p1 = res.predictions.scores[:, 1]
    assert np.all(np.diff(p1[np.argsort(t)]) >= -1e-6)  # monotone in the malignant component


def test_multilabel_uses_positive_negative_prompt_pairs() -> None:
    names = ["effusion", "edema"]
    card = _card("multilabel", names)
    table = {}
    for c, n in enumerate(names):
        for p in card.prompts(n):
            table[p] = _basis(c)
        for p in card.prompts(n, negative=True):
            table[p] = _basis(2 + c)
    rng = np.random.default_rng(3)
    y = (rng.random((80, 2)) < 0.4).astype(float)
    x = np.stack([sum(_basis(c) if row[c] else _basis(2 + c) for c in range(2)) for row in y])
    y_unc = y.copy()
    y_unc[:5, 0] = -1  # uncertain labels are ignored
    res = zeroshot_features(FakeEncoder(table), _feats(x, y_unc), card, names, "multilabel", n_boot=0)
    assert res.value("auroc") == pytest.approx(1.0)
    assert res.value("accuracy") == pytest.approx(1.0)
    # flipping the negative prompts to the positive directions destroys the signal
    bad = {p: (_basis(c) if p in card.prompts(n) else _basis(c)) for c, n in enumerate(names)
           for p in card.prompts(n) + card.prompts(n, negative=True)}
    res_bad = zeroshot_features(FakeEncoder(bad), _feats(x, y), card, names, "multilabel", n_boot=0)
    assert res_bad.value("accuracy") < 0.8


def test_image_only_encoder_is_refused() -> None:
    from medvl.errors import MedvlError

    enc = FakeEncoder({})
    enc.has_text = False
    with pytest.raises(MedvlError, match="text tower"):
        zeroshot_features(enc, _feats(np.eye(E)[:2], np.eye(2)), _card("binary", ["a", "b"]), ["a", "b"], "binary")


def test_retrieval_perfect_alignment() -> None:
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(50, E))
    per = retrieval_per_query(emb, emb + 0.01 * rng.normal(size=(50, E)))
    assert per["i2t_R@1"].mean() == 1.0 and per["t2i_R@1"].mean() == 1.0
    assert np.median(per["i2t_rank"]) == 1


def test_retrieval_known_ranks_and_label_precision() -> None:
    # 4 samples on orthogonal axes; text i = 0.9 e_(i-1) + 0.5 e_i -> image i prefers text i+1,
    # so every true match ranks 2nd
    img = np.eye(4, E)
    txt = 0.9 * np.roll(np.eye(4, E), 1, axis=0) + 0.5 * np.eye(4, E)
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    per = retrieval_per_query(img, txt, labels, ks=(1, 2))
    np.testing.assert_array_equal(per["i2t_rank"], [2, 2, 2, 2])
    assert per["i2t_R@1"].mean() == 0 and per["i2t_R@2"].mean() == 1
    # image i's top text is text i+1: same label set for i = 0 (0->1) and 2 (2->3) only
    np.testing.assert_allclose(per["i2t_P@1(label)"], [1, 0, 1, 0])
    np.testing.assert_allclose(per["i2t_P@2(label)"], [1, 0.5, 1, 0.5])


def test_retrieval_result_records_and_empty_texts() -> None:
    rng = np.random.default_rng(5)
    texts = [f"report {i}" for i in range(30)] + [""]
    vecs = {t: rng.normal(size=E) for t in texts if t}
    x = np.stack([vecs[t] if t else rng.normal(size=E) for t in texts])
    with pytest.warns(RuntimeWarning, match="1 of 31"):
        res = retrieval_features(FakeEncoder(vecs), _feats(x, np.zeros((31, 1)), texts), ["x"], n_boot=30)
    vals = {r.metric: r for r in res.records}
    assert vals["i2t_R@1"].value == 1.0 and vals["t2i_median_rank"].value == 1.0
    assert vals["i2t_R@1"].n == 30
    assert "i2t_R@1" in res.predictions.extra
