"""Prompt sensitivity reads its variants from the card and scores each with the zero-shot head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvl.data.card import ClassInfo, DatasetCard
from medvl.errors import MedvlError
from medvl.evaluate.features import Features
from medvl.evaluate.prompt_sensitivity import prompt_sensitivity, prompt_variants

CARD = DatasetCard(name="t", task="binary", templates=["{label}", "a scan of {label}"],
                   classes=[ClassInfo("benign", synonyms=["normal"]), ClassInfo("malignant", synonyms=["cancer"])])


class WordEncoder:
    """Text embedding = which of 4 keywords it contains, so the right prompts separate the images exactly."""

    has_text = True
    name = "words"
    words = ("benign", "malignant", "normal", "cancer")

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[float(w in t) for w in self.words] + [0.1] for t in texts])


def _test_features() -> Features:
    # images "look like" their class name only: the synonyms 'normal'/'cancer' carry no signal
    x = np.array([[0, 1, 0, 0, 0.1]] * 5 + [[1, 0, 0, 0, 0.1]] * 5, dtype=np.float32)
    labels = np.array([[0, 1]] * 5 + [[1, 0]] * 5, dtype=np.float32)
    return Features(x=x, labels=labels, ids=np.array([str(i) for i in range(10)]), rows=np.arange(1, 11),
                    patient_ids=np.array([""] * 10))


def test_variants_come_from_the_card() -> None:
    names = [n for n, _, _ in prompt_variants(CARD, ["benign", "malignant"])]
    assert names == ["template: {label}", "template: a scan of {label}", "phrase #1: benign, malignant",
                     "phrase #2: normal, cancer"]


def test_spread_reflects_the_wording() -> None:
    ps = prompt_sensitivity(WordEncoder(), _test_features(), CARD, ["benign", "malignant"], "binary",
                            logit_scale=10.0)
    by = {v["name"]: v["value"] for v in ps.variants}
    assert by["phrase #1: benign, malignant"] == pytest.approx(1.0)
    assert by["phrase #2: normal, cancer"] == pytest.approx(0.5)  # every image ties: chance
    assert by["template: {label}"] == pytest.approx(1.0) and ps.ensemble == pytest.approx(1.0)
    d = ps.to_dict()
    assert d["n_variants"] == 4 and d["min"] == pytest.approx(0.5) and d["range"] == pytest.approx(0.5)
    assert d["mean"] == pytest.approx(0.875)


def test_needs_a_text_tower() -> None:
    class ImageOnly:
        has_text = False
        name = "resnet"

    with pytest.raises(MedvlError, match="needs a text tower"):
        prompt_sensitivity(ImageOnly(), _test_features(), CARD, ["benign", "malignant"], "binary")
