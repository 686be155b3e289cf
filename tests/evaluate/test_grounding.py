"""Phrase grounding: metrics on hand-made maps, query phrases, an oracle model, the CLI and its errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from medvl.cli import main
from medvl.data.card import ClassInfo, DatasetCard
from medvl.data.manifest import load_manifest, write_manifest
from medvl.errors import ConfigError, ManifestError, MedvlError
from medvl.evaluate.grounding import (
    grounding_eval,
    grounding_map,
    iou_at_threshold,
    map_auroc,
    pointing_game,
    query_phrase,
    split_sentences,
)
from medvl.evaluate.results import load_results

STRIDE8 = {"kwargs": {"output_stride": 8}}  # test_resnet at 64 px: an 8x8 grid instead of 2x2


def run(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None)


def run_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run a command that must fail with a MedvlError (exit 2); return its one-line message."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    return " ".join(capsys.readouterr().err.split())


# ----------------------------------------------------------------------------- metrics
def _mask() -> np.ndarray:
    m = np.zeros((8, 8), dtype=bool)
    m[2:5, 5:8] = True  # rows 2-4, columns 5-7: not symmetric under transposition
    return m


def test_metrics_on_hand_made_maps() -> None:
    mask = _mask()
    inside = np.zeros((8, 8))
    inside[3, 6] = 1.0
    assert pointing_game(inside, mask) == 1.0
    outside = np.zeros((8, 8))
    outside[6, 3] = 1.0  # the transposed position
    assert pointing_game(outside, mask) == 0.0
    exact = mask.astype(float)
    assert iou_at_threshold(exact, mask) == 1.0 and map_auroc(exact, mask) == 1.0
    assert map_auroc(1.0 - exact, mask) == 0.0 and iou_at_threshold(1.0 - exact, mask) == 0.0
    constant = np.full((8, 8), 0.3)
    assert map_auroc(constant, mask) == 0.5
    assert iou_at_threshold(constant, mask) == 0.0  # a constant map predicts no region
    half = np.zeros((8, 8))
    half[2:5, 5:8] = 0.4  # min-max keeps these at 0.4: under 0.5, over 0.3
    half[2:5, 7] = 1.0  # so at 0.5 only these 3 of the 9 mask pixels are predicted
    assert iou_at_threshold(half, mask, 0.5) == pytest.approx(3 / 9)
    assert iou_at_threshold(half, mask, 0.3) == pytest.approx(1.0)
    assert np.isnan(map_auroc(constant, np.ones((8, 8), bool)))


def test_map_auroc_matches_sklearn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    mask = _mask()
    heat = np.round(rng.random((8, 8)) + mask * 0.3, 1)  # coarse values: many ties
    assert map_auroc(heat, mask) == pytest.approx(roc_auc_score(mask.ravel(), heat.ravel()))


# ----------------------------------------------------------------------------- phrases
CARD = DatasetCard(name="t", task="multilabel", classes=[
    ClassInfo("pneumothorax", synonyms=["collapsed lung"]),
    ClassInfo("pleural effusion", synonyms=["effusion", "pleural fluid"]),
    ClassInfo("nodule", synonyms=["nodular opacity"]),
    ClassInfo("consolidation", synonyms=["airspace disease"]),
])


def test_sentences_drop_headers_and_end_punctuation() -> None:
    text = "FINDINGS: Heart size is normal. Ratio 0.54 noted.\nIMPRESSION: Normal study."
    assert split_sentences(text) == ["Heart size is normal", "Ratio 0.54 noted", "Normal study"]


@pytest.mark.parametrize(("report", "finding", "expected"), [
    ("FINDINGS: No left pneumothorax. Subtle lucency, possibly a small right pneumothorax. IMPRESSION: "
     "Possible pneumothorax.", "pneumothorax", "Subtle lucency, possibly a small right pneumothorax"),
    ("There is no pleural effusion or pneumothorax. Small right-sided effusion.", "pleural effusion",
     "Small right-sided effusion"),  # synonym, and the negated sentence skipped
    ("No pneumothorax. Right upper lobe airspace disease.", "consolidation", "Right upper lobe airspace disease"),
    ("No effusion, but a small left pneumothorax.", "pneumothorax", "No effusion, but a small left pneumothorax"),
    ("Consolidation without effusion.", "consolidation", "Consolidation without effusion"),
    ("A 10 mm nodules cluster in the left zone.", "nodule", "A 10 mm nodules cluster in the left zone"),
])
def test_query_phrase_picks_first_non_negated_mention(report: str, finding: str, expected: str) -> None:
    assert query_phrase(report, finding, CARD) == (expected, False)


@pytest.mark.parametrize(("report", "finding"), [
    ("No focal nodular opacity. Heart size is normal.", "nodule"),
    ("There is no pleural effusion or pneumothorax.", "pneumothorax"),
    ("Consolidation without effusion.", "pleural effusion"),
    ("The pneumothorax has resolved.", "pneumothorax"),
    ("Negative for pleural fluid.", "pleural effusion"),
    ("Normal chest radiograph.", "nodule"),
])
def test_query_phrase_falls_back_to_class_name(report: str, finding: str) -> None:
    assert query_phrase(report, finding, CARD) == (finding, True)


# ----------------------------------------------------------------------------- heat map orientation
def test_grounding_map_is_row_major_on_a_non_square_grid() -> None:
    h, w, e = 4, 8, 16
    basis = torch.eye(e)
    patches = basis[1].repeat(h * w, 1)
    patches[1 * w + 6] = basis[0]  # cell (row 1, column 6)
    heat = grounding_map(patches, (h, w), basis[:1], size=(32, 64))
    r, c = np.unravel_index(int(torch.argmax(heat)), heat.shape)
    assert 8 <= r < 16 and 48 <= c < 56  # inside that cell's 8x8 pixel block
    assert grounding_map(patches, (h, w), basis[:1]).shape == (h, w)


# ----------------------------------------------------------------------------- oracle model
def _oracle(model: Any, transpose: bool = False) -> Any:
    """Patch features = word features on bright cells: a perfect grounder if the wiring is right."""
    e = model.cfg.embed_dim
    word, other = torch.eye(e)[0], torch.eye(e)[1]

    def encode_image_tokens(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        cells = F.avg_pool2d(images[:, :1], 8)[:, 0]  # [B, 8, 8] mean brightness per 8x8 cell
        if transpose:
            cells = cells.transpose(1, 2)
        bright = (cells > 0.5).flatten(1)[..., None]  # row-major, like the towers
        tokens = torch.where(bright, word, other)
        return tokens.mean(1), tokens, (8, 8)

    def encode_text_tokens(ids: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = word.expand(ids.shape[0], ids.shape[1], e)
        return tokens[:, 0], tokens

    model.encode_image_tokens = encode_image_tokens
    model.encode_text_tokens = encode_text_tokens
    return model


@pytest.fixture(scope="module")
def oracle_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48x64 images (padded to 64x64 by the model's resize) with a bright block exactly where the mask is."""
    root = tmp_path_factory.mktemp("oracle")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        img = rng.integers(0, 40, (48, 64)).astype(np.uint8)
        mask = np.zeros((48, 64), np.uint8)
        # after 8 px of padding on top, rows 32-47 -> 40-55 (grid rows 5-6); columns on grid cells
        c0 = 8 * (i % 3)
        mask[32:48, c0:c0 + 24] = 255
        img[mask > 0] = 230
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "images" / f"{i}_mask.png")
        rows.append({"image": f"images/{i}.png", "text": "FINDINGS: No effusion. Small left pneumothorax.",
                     "labels": "pneumothorax", "split": "test", "patient_id": f"p{i // 2}",
                     "mask": f"images/{i}_mask.png", "mask_labels": "pneumothorax"})
    write_manifest(rows, root / "manifest.csv")
    CARD.save(root / "card.yaml")
    return root / "manifest.csv"


@pytest.mark.parametrize("transpose", [False, True])
def test_oracle_features_point_inside_the_mask(oracle_data: Path, transpose: bool) -> None:
    from medvl.models import create_model

    model = _oracle(create_model("clip-tiny", image=STRIDE8, tokenizer_texts=["small left pneumothorax"] * 4),
                    transpose)
    res = grounding_eval(model, oracle_data, "test", n_boot=50)
    pg, iou, auc = (res.value(m) for m in ("pointing_game", "iou@0.5", "map_auroc"))
    if transpose:  # a row/column mix-up must be caught by these numbers
        assert pg == 0.0 and auc < 0.6
    else:
        assert pg == 1.0 and auc > 0.99 and iou > 0.9  # a stretched (not padded) mask gives 0.88 / 0.53
    rec = res.records[0]
    assert rec.n == 6 and rec.n_groups == 3 and rec.config["patch_grid"] == [8, 8]
    assert rec.config["n_fallback_phrases"] == 0
    assert rec.config["chance_pointing_game"] == pytest.approx(16 * 24 / 64**2)
    assert res.predictions is not None and res.predictions.meta["phrases"][0] == "Small left pneumothorax"


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def synth(grounding_set: dict[str, Any]) -> dict[str, Any]:
    return grounding_set


def _variant(synth: dict[str, Any], name: str, rows: list[dict[str, Any]]) -> Path:
    """A manifest beside the original (same card and relative image paths)."""
    return write_manifest(rows, synth["manifest"].parent / f"{name}.csv")


def test_cli_writes_three_metrics_with_cis(synth: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "g.json"
    run(["eval", "grounding", "-m", str(synth["model"]), "-d", str(synth["manifest"]), "--out", str(out),
         "--n-boot", "30", "--threshold", "0.4"])
    records = json.loads(out.read_text())
    assert [r["metric"] for r in records] == ["pointing_game", "iou@0.4", "map_auroc"]
    n_pairs = sum(len(r["mask_labels"].split("|")) for r in synth["rows"] if r["split"] == "test" and r["mask"])
    for r in records:
        assert r["task"] == "grounding" and r["n"] == n_pairs and 0 <= r["value"] <= 1
        assert r["ci_low"] is not None and r["ci_low"] <= r["value"] <= r["ci_high"]
        assert set(r["per_class"]) == set(r["config"]["pairs_per_class"])
    cfg = records[0]["config"]
    assert 0 < cfg["chance_pointing_game"] < 1 and cfg["threshold"] == 0.4 and cfg["patch_grid"] == [8, 8]
    assert "n_fallback_phrases" in cfg
    (run_,) = load_results(out)
    preds = run_.predictions
    assert preds is not None and preds.n == n_pairs and set(preds.extra) == {"pointing_game", "iou@0.4", "map_auroc"}
    assert np.isclose(preds.extra["map_auroc"].mean(), records[2]["value"])
    run(["eval", "compare", str(out), str(out), "--n-boot", "10"])


def test_manifest_errors_name_file_row_and_columns(synth: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    rows = synth["rows"]
    no_mask = _variant(synth, "no_mask", [{k: v for k, v in r.items() if k not in ("mask", "mask_labels")}
                                          for r in rows])
    msg = run_error(["eval", "grounding", "-m", str(synth["model"]), "-d", str(no_mask)], capsys)
    assert str(no_mask) in msg and "'mask'" in msg and "'mask_labels'" in msg

    first = next(i for i, r in enumerate(rows) if r["split"] == "test" and r["mask"])
    bad = [dict(r) for r in rows]
    bad[first]["mask_labels"] += "|nodule"
    path = _variant(synth, "mismatch", bad)
    with pytest.raises(ManifestError, match=rf"{re.escape(path.name)}, row {first + 1}: 1 mask path\(s\).* 2 finding"):
        grounding_eval(str(synth["model"]), path, n_boot=0)

    gone = [dict(r) for r in rows]
    gone[first]["mask"] = "images/missing_mask.png"
    path = _variant(synth, "missing", gone)
    with pytest.raises(ManifestError, match=rf"row {first + 1}: mask file not found: .*missing_mask\.png"):
        grounding_eval(str(synth["model"]), path, n_boot=0)
    with pytest.raises(ConfigError, match="threshold"):
        grounding_eval(str(synth["model"]), synth["manifest"], threshold=0.0)


def test_models_without_local_features_or_text_are_refused(synth: dict[str, Any],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from medvl.models import create_model

    msg = run_error(["eval", "grounding", "-m", "timm:test_resnet", "-d", str(synth["manifest"])], capsys)
    assert "text tower" in msg and "timm:test_resnet" in msg
    with pytest.raises(MedvlError, match="trained tokenizer"):
        grounding_eval(create_model("clip-tiny"), synth["manifest"], n_boot=0)
    volume = create_model("clip3d-tiny", tokenizer_texts=["a b c"] * 3)
    with pytest.raises(ConfigError, match=r"expects volumes \[B, C, D, H, W\]"):  # 3D tower on 2D images
        grounding_eval(volume, synth["manifest"], n_boot=0)
    assert load_manifest(synth["manifest"]).card is not None
