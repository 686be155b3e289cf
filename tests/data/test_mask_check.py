"""``medvl data check`` opens every finding mask: readable, on its image's grid, binary (or inside a
declared label map), its ``mask_labels`` known to the card. Before, a truncated mask PNG passed
and grounding failed later."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

import medvl.cli  # noqa: F401  registers the commands
from medvl.cli.app import app
from medvl.data.card import ClassInfo, DatasetCard
from medvl.data.check import check_manifest
from medvl.data.manifest import write_manifest


def _save(path: Path, arr: np.ndarray) -> str:
    Image.fromarray(arr).save(path)
    return path.name


def _blob(size: int = 16, value: int = 255) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[4:9, 5:11] = value
    return m


def _dataset(root: Path, masks: dict[int, tuple[str, str]]) -> Path:
    """4 rows with 16x16 images; ``masks[row] = (mask cell, mask_labels cell)`` (default: a good mask)."""
    DatasetCard(name="toy", task="multilabel",
                classes=[ClassInfo("nodule"), ClassInfo("effusion")]).save(root / "card.yaml")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(1, 5):
        image = _save(root / f"{i}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
        mask, labels = masks.get(i, (_save(root / f"{i}_mask.png", _blob()), "nodule"))
        rows.append({"image": image, "text": "x", "labels": "nodule", "split": "train" if i < 3 else "test",
                     "patient_id": f"p{i}", "mask": mask, "mask_labels": labels})
    return write_manifest(rows, root / "manifest.csv")


def _errors(manifest: Path) -> list[tuple[str, int | None, str | None]]:
    return [(f.code, f.row, Path(f.file).name if f.file else None) for f in check_manifest(manifest).errors]


def test_good_masks_and_a_label_map_pass(tmp_path: Path) -> None:
    lm = _blob(value=1)
    lm[10:14, 2:6] = 2  # value k = the k-th of mask_labels
    manifest = _dataset(tmp_path, {4: (_save(tmp_path / "lm.png", lm), "nodule|effusion"),
                                   3: (_save(tmp_path / "01.png", _blob(value=1)), "effusion")})
    report = check_manifest(manifest)
    assert report.ok, [str(f) for f in report.errors]


def test_truncated_mask_is_an_error_naming_row_and_file(tmp_path: Path) -> None:
    good = tmp_path / "full.png"
    _save(good, _blob())
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    manifest = _dataset(tmp_path, {2: ("cut.png", "nodule")})
    assert _errors(manifest) == [("unreadable_mask", 2, "cut.png")]
    res = CliRunner().invoke(app, ["data", "check", str(manifest)])
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and "unreadable_mask" in out and "row 2" in out and "cut.png" in out, out


def test_mask_of_another_size_is_an_error(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path, {3: (_save(tmp_path / "big.png", _blob(32)), "nodule")})
    [finding] = check_manifest(manifest).errors
    assert (finding.code, finding.row) == ("mask_size", 3)
    assert finding.message == "mask is 32x32 but its image is 16x16" and finding.file.endswith("big.png")


def test_non_binary_mask_is_an_error(tmp_path: Path) -> None:
    soft = _blob()
    soft[0, 0] = 128  # an anti-aliased edge: not a mask grounding can binarise safely
    manifest = _dataset(tmp_path, {1: (_save(tmp_path / "soft.png", soft), "nodule")})
    [finding] = check_manifest(manifest).errors
    assert (finding.code, finding.row) == ("mask_values", 1) and "not binary" in finding.message
    assert "128" in finding.message


def test_label_map_values_beyond_its_labels_are_an_error(tmp_path: Path) -> None:
    lm = _blob(value=1)
    lm[0:2, 0:2] = 3  # only two labels declared
    manifest = _dataset(tmp_path, {2: (_save(tmp_path / "lm.png", lm), "nodule|effusion")})
    [finding] = check_manifest(manifest).errors
    assert (finding.code, finding.row) == ("mask_values", 2) and "label map 0..2" in finding.message


def test_unknown_mask_label_and_count_mismatch_are_errors(tmp_path: Path) -> None:
    a = _save(tmp_path / "a.png", _blob())
    b = _save(tmp_path / "b.png", _blob())
    manifest = _dataset(tmp_path, {1: (a, "nodul"), 4: (f"{a}|{b}", "nodule|effusion|nodule")})
    errors = check_manifest(manifest).errors
    assert [(f.code, f.row) for f in errors] == [("unknown_mask_label", 1), ("mask_label_count", 4)]
    assert errors[0].message == "mask label(s) 'nodul' not in the card; known: nodule, effusion"


def test_no_images_skips_decoding_masks(tmp_path: Path) -> None:
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    manifest = _dataset(tmp_path, {2: ("cut.png", "nodule")})
    assert check_manifest(manifest, verify_images=False).ok
