"""Synthetic chest phantoms: determinism, laterality, masks, reports, splits, sites, card, CLI, bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvl.data.manifest import load_manifest
from medvl.data.phantom_anatomy import render_phantom
from medvl.data.synthetic import CLASSES, apply_site, generate_phantoms, parse_count_range, sample_cohort
from medvl.errors import ConfigError, MedvlError

SIZE = 32
HEDGES = ("possible", "questionable", "may represent", "borderline", "probable", "subtle")
NEGATION_OR_PAST = re.compile(r"^(no |there is no )|sharp|resolution|resolved|cleared|previously", re.I)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory):
    """One 400-study dataset shared by the read-only tests (about 1 s to make)."""
    out = tmp_path_factory.mktemp("synth")
    return load_manifest(generate_phantoms(out, n=400, size=SIZE, seed=7))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _sentences(text: str) -> list[str]:
    body = text.replace("FINDINGS:", "").replace("IMPRESSION:", ".")
    return [s.strip() for s in re.split(r"(?<=\.)\s+|\d\.\s", body) if s.strip(" .")]


def _positive_mentions(text: str, keywords: tuple[str, ...]) -> list[str]:
    """Sentences that assert a finding now (not negated, not 'previously seen ... resolved')."""
    return [s for s in _sentences(text)
            if any(k in s.lower() for k in keywords) and not NEGATION_OR_PAST.search(s)]


def _mask(manifest, sample, label: str) -> np.ndarray:
    labels = sample.extra["mask_labels"].split("|")
    path = sample.mask.split("|")[labels.index(label)]
    return np.asarray(Image.open(manifest.resolve(path)))


# ----------------------------------------------------------------------------- determinism
def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    a = _files(generate_phantoms(tmp_path / "a", n=12, size=24, seed=3).parent)
    b = _files(generate_phantoms(tmp_path / "b", n=12, size=24, seed=3).parent)
    c = _files(generate_phantoms(tmp_path / "c", n=12, size=24, seed=4).parent)
    assert a == b
    assert a["manifest.csv"] != c["manifest.csv"]
    assert a["images/p00001_s1.png"] != c["images/p00001_s1.png"]


# ----------------------------------------------------------------------------- laterality
@pytest.mark.parametrize(("label", "column", "keywords"), [
    ("nodule", "nodule_side", ("nodul",)),
    ("pleural effusion", "effusion_side", ("effusion", "pleural fluid", "costophrenic")),
    ("pneumothorax", "pneumothorax_side", ("pneumothorax", "collapsed", "pleural line")),
])
def test_laterality_of_mask_and_report(synth, label: str, column: str, keywords: tuple[str, ...]) -> None:
    """Patient's left is the image's right half, and the report names the same side."""
    rows = [s for s in synth.samples if s.extra[column]]
    assert len(rows) >= 25, f"too few {label} rows to test laterality"
    sides = {s.extra[column] for s in rows}
    assert sides == {"left", "right"}
    for s in rows:
        side = s.extra[column]
        mask = _mask(synth, s, label) > 0
        centroid = np.nonzero(mask)[1].mean()
        on_image_right = centroid > (SIZE - 1) / 2
        assert on_image_right == (side == "left"), (s.study_id, side, centroid)  # radiological convention
        mentions = _positive_mentions(s.text, keywords)
        assert mentions, (s.study_id, s.text)
        other = "right" if side == "left" else "left"
        for sentence in mentions:
            assert side in sentence.lower() and other not in sentence.lower(), (s.study_id, sentence)


def test_consolidation_lobe_side_matches_mask(synth) -> None:
    rows = [s for s in synth.samples if s.extra["consolidation_lobe"]]
    assert len(rows) >= 25
    for s in rows:
        lobe = s.extra["consolidation_lobe"]
        centroid = np.nonzero(_mask(synth, s, "consolidation"))[1].mean()
        assert (centroid > (SIZE - 1) / 2) == lobe.startswith("left"), (s.study_id, lobe)
        assert lobe in s.text.lower()


# ----------------------------------------------------------------------------- masks
def test_masks_exist_exactly_for_present_findings(synth) -> None:
    for s in synth.samples:
        findings = [c for c in s.positive_labels if c != "no finding"]
        mask_labels = [x for x in s.extra["mask_labels"].split("|") if x]
        assert mask_labels == findings, s.study_id
        paths = [p for p in s.mask.split("|") if p]
        assert len(paths) == len(findings)
        on_disk = sorted(synth.root.glob(f"images/{s.study_id}_mask_*.png"))
        assert len(on_disk) == len(findings), s.study_id
        for p in paths:
            m = np.asarray(Image.open(synth.resolve(p)))
            assert m.shape == (SIZE, SIZE) and m.dtype == np.uint8
            assert set(np.unique(m)) <= {0, 255} and m.any(), (s.study_id, p)
        assert ("no finding" in s.positive_labels) == (not findings)


def test_images_are_grayscale_at_requested_sizes(tmp_path: Path) -> None:
    for size, fmt in ((28, "jpg"), (128, "png")):
        m = load_manifest(generate_phantoms(tmp_path / str(size), n=3, size=size, seed=0, image_format=fmt))
        for s in m.samples:
            assert s.image[0].endswith(f".{fmt}")
            im = Image.open(m.image_paths(s)[0])
            assert im.mode == "L" and im.size == (size, size)


# ----------------------------------------------------------------------------- reports
def test_every_report_has_findings_then_impression(synth) -> None:
    for s in synth.samples:
        assert re.fullmatch(r"FINDINGS: \S.* IMPRESSION: \S.*", s.text), s.text
        assert "\n" not in s.text


def test_absent_findings_are_negated_sometimes_not_always(synth) -> None:
    for label, pattern in [("pleural effusion", r"\bno (pleural )?(effusion|fluid)"),
                           ("pneumothorax", r"\bno (evidence of )?pneumothorax|or pneumothorax")]:
        absent = [s for s in synth.samples if label not in s.labels]
        rate = np.mean([bool(re.search(pattern, s.text, re.I)) for s in absent])
        assert 0.3 < rate < 0.95, (label, rate)


def test_subtle_findings_are_hedged_and_clear_ones_are_not(synth) -> None:
    subtle = [s for s in synth.samples if s.extra["subtle"]]
    clear = [s for s in synth.samples if not s.extra["subtle"]]
    assert len(subtle) >= 20
    assert all(any(h in s.text.lower() for h in HEDGES) for s in subtle)
    assert not any(any(h in s.text.lower() for h in HEDGES) for s in clear)


def test_wording_varies_and_keyword_matching_is_not_enough(synth) -> None:
    """Synonyms vary the text, and naive word spotting misreads negations / resolved findings."""
    effusion = [s for s in synth.samples if "pleural effusion" in s.labels]
    assert any("pleural effusion" not in s.text.lower() for s in effusion)
    assert len({s.text for s in synth.samples}) > 0.9 * len(synth)
    normal = [s for s in synth.samples if s.positive_labels == ["no finding"]]
    assert len({s.text.split("IMPRESSION:")[1] for s in normal}) >= 4
    for word, label in [("effusion", "pleural effusion"), ("pneumothorax", "pneumothorax")]:
        spotted = [word in s.text.lower() for s in synth.samples]
        truth = [label in s.labels for s in synth.samples]
        false_pos = sum(sp and not t for sp, t in zip(spotted, truth, strict=True))
        assert false_pos > 0.2 * sum(truth), word


def test_report_quotes_nodule_size(synth) -> None:
    for s in synth.samples:
        if s.extra["nodule_size_mm"]:
            assert f"{s.extra['nodule_size_mm']} mm" in s.text


# ----------------------------------------------------------------------------- cohort
def test_patients_never_span_splits(synth) -> None:
    split_of: dict[str, set[str]] = {}
    for s in synth.samples:
        split_of.setdefault(s.patient_id, set()).add(s.split)
    assert all(len(v) == 1 for v in split_of.values())
    fractions = {k: np.mean([next(iter(v)) == k for v in split_of.values()]) for k in ("train", "val", "test")}
    assert abs(fractions["train"] - 0.7) < 0.05 and abs(fractions["test"] - 0.2) < 0.05, fractions
    assert max(s.extra["study_index"] for s in synth.samples) == "3"
    assert len({s.study_id for s in synth.samples}) == len(synth)


def test_prevalence_is_realistic(synth) -> None:
    m = synth.label_matrix().mean(axis=0)
    prev = dict(zip(synth.classes, m, strict=True))
    for c in CLASSES[:-1]:
        assert 0.1 <= prev[c] <= 0.32, (c, prev[c])
    assert 0.2 <= prev["no finding"] <= 0.45


def test_sites_differ_in_intensity_and_noise(synth) -> None:
    """site_b is brighter (gamma) and its pixel-scale texture differs (half resolution plus more noise)."""
    from scipy import ndimage

    stats: dict[str, list[tuple[float, float]]] = {}
    for s in synth.samples:
        img = np.asarray(Image.open(synth.image_paths(s)[0]), dtype=np.float32)
        stats.setdefault(s.site, []).append((img.mean(), np.median(np.abs(ndimage.laplace(img)))))
    assert set(stats) == {"site_a", "site_b"}
    a, b = np.array(stats["site_a"]), np.array(stats["site_b"])
    assert b[:, 0].mean() - a[:, 0].mean() > 10
    stderr = a[:, 1].std() / np.sqrt(len(a)) + b[:, 1].std() / np.sqrt(len(b))
    assert abs(a[:, 1].mean() - b[:, 1].mean()) > 5 * stderr


def test_ctr_column_matches_cardiomegaly(synth) -> None:
    for s in synth.samples:
        assert (float(s.extra["ctr"]) > 0.5) == ("cardiomegaly" in s.labels)


def test_manifest_loads_with_card(synth) -> None:
    assert synth.classes == list(CLASSES)
    card = synth.card
    assert card is not None and card.task == "multilabel" and card.modality == "xray"
    for c in card.classes:
        assert c.descriptions and c.synonyms
    assert "a chest x-ray showing pneumothorax" in card.prompts("pneumothorax")
    assert "no pleural effusion" in card.prompts("pleural effusion", negative=True)
    assert {s.modality for s in synth.samples} == {"xray"}
    assert synth.label_matrix().shape == (400, len(CLASSES))
    assert all(synth.image_paths(s)[0].is_file() for s in synth.samples)


def test_cardiomegaly_learnable_from_pixels_but_not_trivially() -> None:
    """A linear probe on 16x16 pixels beats chance on cardiomegaly but is not perfect."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    studies = sample_cohort(500, seed=5)
    x = []
    for st in studies:
        rng = np.random.default_rng([5, 1, st.index])
        img = apply_site(render_phantom(st.phantom, 32, rng)[0], st.site, rng)
        x.append(img.reshape(16, 2, 16, 2).mean(axis=(1, 3)).ravel() / 255.0)
    x = np.asarray(x)
    y = np.array(["cardiomegaly" in st.phantom.labels for st in studies])
    train = np.array([st.split != "test" for st in studies])
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500)).fit(x[train], y[train])
    auc = roc_auc_score(y[~train], clf.predict_proba(x[~train])[:, 1])
    assert 0.7 < auc < 0.99, auc


# ----------------------------------------------------------------------------- CLI and bad input
def test_cli_synth(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    import medvl.cli  # noqa: F401  (registers the commands)
    from medvl.cli.app import app

    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["data", "synth", "--out", str(out), "--n", "6", "--size", "24", "--seed", "1", "--sites", "3",
            "--studies-per-patient", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    m = load_manifest(out / "manifest.csv")
    assert len(m) == 6 and len({s.patient_id for s in m.samples}) == 3
    again = runner.invoke(app, args)
    assert isinstance(again.exception, MedvlError) and "not empty" in str(again.exception)
    bad = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "bad"), "--n", "0"])
    assert isinstance(bad.exception, ConfigError) and "n:" in str(bad.exception)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n": 0}, "n: number of images must be a positive integer"),
    ({"n": -5}, "n: number of images must be a positive integer"),
    ({"size": 15}, "size: image size must be an integer >= 16"),
    ({"seed": -1}, "seed: must be a non-negative integer"),
    ({"sites": 0}, "sites: must be between 1 and 4"),
    ({"sites": 5}, "sites: must be between 1 and 4"),
    ({"image_format": "bmp"}, "format: must be one of png, jpg"),
    ({"studies_per_patient": "a-b"}, "studies-per-patient: expected a count"),
    ({"studies_per_patient": "0-2"}, "studies-per-patient: range must satisfy"),
])
def test_bad_arguments_raise_config_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"n": 4, "size": 24} | kwargs
    with pytest.raises(ConfigError, match=re.escape(message)):
        generate_phantoms(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()  # validation happens before anything is written


def test_non_empty_out_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(MedvlError, match="is not empty; pass --overwrite"):
        generate_phantoms(out, n=4, size=24)
    generate_phantoms(out, n=4, size=24, overwrite=True)
    (out / "images" / "stale.png").write_bytes(b"x")
    generate_phantoms(out, n=2, size=24, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me"
    assert not (out / "images" / "stale.png").exists()
    assert len(load_manifest(out / "manifest.csv")) == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(MedvlError, match="not a directory"):
        generate_phantoms(tmp_path / "file", n=2, size=24)


def test_parse_count_range() -> None:
    assert parse_count_range("1-3") == (1, 3)
    assert parse_count_range("2") == (2, 2)
    assert parse_count_range(2) == (2, 2)
    with pytest.raises(ConfigError):
        parse_count_range("1-2-3")
