"""The data contract: manifests in three formats, both label layouts, and the dataset card."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from medvl.data.card import ClassInfo, DatasetCard, card_from_dict, load_card
from medvl.data.manifest import load_manifest, sample_to_row, write_manifest
from medvl.errors import ManifestError


def _card() -> DatasetCard:
    return DatasetCard(
        name="toy",
        task="multilabel",
        classes=[ClassInfo("effusion", ["fluid in the pleural space"], ["pleural fluid"]), ClassInfo("nodule")],
        templates=["{label}", "chest x-ray with {label}"],
        negative_templates=["no {label}"],
    )


ROWS = [
    {"image": "a.png", "text": "left effusion", "labels": "effusion", "split": "train", "patient_id": "p1"},
    {"image": "b.png|c.png", "text": "", "labels": "effusion|nodule", "split": "test", "patient_id": "p2"},
    {"image": "d.png", "text": "normal", "labels": "", "split": "", "patient_id": "", "site": "s2"},
]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifest_round_trips_in_every_format(tmp_path: Path, suffix: str) -> None:
    _card().save(tmp_path / "card.yaml")
    path = write_manifest(ROWS, tmp_path / f"manifest{suffix}")
    m = load_manifest(path)
    assert m.card is not None and m.classes == ["effusion", "nodule"]
    assert [s.image for s in m.samples] == [["a.png"], ["b.png", "c.png"], ["d.png"]]
    assert m.samples[1].positive_labels == ["effusion", "nodule"]
    assert m.samples[2].split == "train"  # blank split defaults to train
    assert m.samples[2].group_id == "row3"  # no patient id: the row is its own group
    assert m.samples[2].site == "s2"
    np.testing.assert_array_equal(m.label_matrix(), [[1, 0], [1, 1], [0, 0]])
    assert m.resolve("a.png") == tmp_path / "a.png"


def test_chexpert_style_columns_keep_uncertain_and_unknown(tmp_path: Path) -> None:
    _card().save(tmp_path / "card.yaml")
    path = tmp_path / "m.csv"
    path.write_text("image,text,effusion,nodule\nx.png,t,1,-1\ny.png,t,0,\n")
    m = load_manifest(path)
    assert m.label_format == "columns"
    mat = m.label_matrix()
    assert mat[0].tolist() == [1.0, -1.0]
    assert mat[1, 0] == 0.0 and math.isnan(mat[1, 1])
    row = sample_to_row(m.samples[1], m.label_format, m.classes)
    assert row["effusion"] == 0 and row["nodule"] == ""


def test_bad_label_value_names_row_and_column(tmp_path: Path) -> None:
    _card().save(tmp_path / "card.yaml")
    path = tmp_path / "m.csv"
    path.write_text("image,effusion,nodule\nx.png,1,0\ny.png,yes,0\n")
    with pytest.raises(ManifestError, match=r"row 2, column 'effusion'.*'yes'"):
        load_manifest(path)


def test_structural_errors_are_named(tmp_path: Path) -> None:
    (tmp_path / "noimage.csv").write_text("text,labels\nhello,a\n")
    with pytest.raises(ManifestError, match="required column 'image'"):
        load_manifest(tmp_path / "noimage.csv")
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png"}\n{not json}\n')
    with pytest.raises(ManifestError, match="line 2: invalid JSON"):
        load_manifest(tmp_path / "bad.jsonl")
    (tmp_path / "m.tsv").write_text("image\n")
    with pytest.raises(ManifestError, match="unsupported manifest format"):
        load_manifest(tmp_path / "m.tsv")
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "missing.csv")
    (tmp_path / "extra.csv").write_text("image,text\na.png,x,unexpected\n")
    with pytest.raises(ManifestError, match="row 1: more fields"):
        load_manifest(tmp_path / "extra.csv")


def test_card_prompts_ensemble_templates_and_phrases(tmp_path: Path) -> None:
    card = _card()
    prompts = card.prompts("effusion")
    assert prompts == [
        "effusion", "pleural fluid", "fluid in the pleural space",
        "chest x-ray with effusion", "chest x-ray with pleural fluid", "chest x-ray with fluid in the pleural space",
    ]
    assert card.prompts("nodule", negative=True) == ["no nodule"]
    card.save(tmp_path / "card.yaml")
    again = load_card(tmp_path / "card.yaml")
    assert again.to_dict() == card.to_dict()
    with pytest.raises(ManifestError, match="unknown class 'mass'"):
        card.prompts("mass")


@pytest.mark.parametrize(
    "data, match",
    [
        ({"name": "x", "task": "regression", "classes": ["a"]}, "task must be one of"),
        ({"name": "x", "task": "binary", "classes": []}, "no classes"),
        ({"name": "x", "task": "binary", "classes": ["a", "a"]}, "duplicate class"),
        ({"name": "x", "task": "binary", "classes": ["a"], "templates": ["no placeholder"]}, "placeholder"),
        ({"name": "x", "task": "binary", "classes": [{"synonyms": ["q"]}]}, "class #0"),
    ],
)
def test_invalid_cards_are_rejected(data: dict, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        card_from_dict(data)


def test_explicit_negatives_replace_negative_templates(tmp_path: Path) -> None:
    card = DatasetCard(name="cxr", task="multilabel",
                       classes=[ClassInfo("no finding", negatives=["abnormal chest x-ray"]), ClassInfo("nodule")],
                       negative_templates=["no {label}"])
    assert card.prompts("no finding", negative=True) == ["abnormal chest x-ray"]
    assert card.prompts("nodule", negative=True) == ["no nodule"]
    card.save(tmp_path / "card.yaml")
    assert load_card(tmp_path / "card.yaml").prompts("no finding", negative=True) == ["abnormal chest x-ray"]
