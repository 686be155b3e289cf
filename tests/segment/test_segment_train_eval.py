"""train-seg -> eval segment end to end (2D phantoms, the shared NIfTI sample), exact resume, NaN guard."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medvl.cli import app
from medvl.errors import TrainingDivergedError
from medvl.segment.model import load_seg_model
from medvl.segment.train import load_seg_config, train_segmentation

from .conftest import tiny_overrides

runner = CliRunner()


def test_cli_train_then_eval_2d(seg_phantoms: Path, tmp_path: Path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train-seg", *tiny_overrides(seg_phantoms), "--out", str(out), "--label-fraction", "0.5"])
    assert res.exit_code == 0, res.output
    assert (out / "last" / "weights.safetensors").is_file() and (out / "last" / "train_state.pt").is_file()
    results = tmp_path / "seg.json"
    res = runner.invoke(app, ["eval", "segment", "-m", str(out / "last"), "-d", str(seg_phantoms), "--n-boot", "50",
                              "--out", str(results), "--masks-out", str(tmp_path / "masks")])
    assert res.exit_code == 0, res.output
    records = json.loads(results.read_text())
    names = {r["metric"] for r in records}
    assert {"dice", "iou", "hd95", "nsd", "dice/nodule", "dice_present/nodule"} <= names
    dice = next(r for r in records if r["metric"] == "dice")
    assert 0 <= dice["value"] <= 1 and dice["ci_low"] <= dice["value"] <= dice["ci_high"]
    with open(seg_phantoms, newline="") as f:
        n_test = sum(r["split"] == "test" for r in csv.DictReader(f))
    assert dice["n"] == n_test and len(list((tmp_path / "masks").glob("*.png"))) == n_test
    # Per-case values are stored: compare runs paired tests on them (a result against itself: delta 0).
    res = runner.invoke(app, ["eval", "compare", str(results), str(results), "--n-boot", "50"])
    assert res.exit_code == 0, res.output
    assert "dice" in res.output


def test_resume_is_exact(seg_phantoms: Path, tmp_path: Path):
    full = load_seg_config(None, tiny_overrides(seg_phantoms, steps=4), tmp_path / "full")
    train_segmentation(full)
    # Simulate a kill after step 2: drop the step-4 checkpoint, then resume.
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part, symlinks=True)
    shutil.rmtree(part / "checkpoints" / "step_000004")
    cfg = load_seg_config(None, tiny_overrides(seg_phantoms, steps=4), part)
    r = train_segmentation(cfg, resume=True)
    assert len(r.losses) == 2
    a = load_seg_model(tmp_path / "full" / "checkpoints" / "step_000004").state_dict()
    b = load_seg_model(part / "checkpoints" / "step_000004").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nan_guard_names_the_step(seg_phantoms: Path, tmp_path: Path):
    cfg = load_seg_config(None, tiny_overrides(seg_phantoms, steps=3) + ["optim.lr=1e30", "optim.warmup_steps=0",
                                                                         "optim.clip_grad_norm=null"], tmp_path / "r")
    with pytest.raises(TrainingDivergedError, match=r"diverged at step \d+: .*manifest rows"):
        train_segmentation(cfg)


def test_volume_nifti_sample_cli(shared_data: Path, tmp_path: Path):
    """clip3d-tiny's tower + FPN head on the shared NIfTI sample; mask written with the input's affine."""
    import nibabel as nib

    src = shared_data / "samples" / "nifti"
    manifest = tmp_path / "manifest.csv"
    rows = [{"image": str(src / "anatomical.nii"), "mask": str(src / "anatomical_label.nii.gz"),
             "mask_labels": "1:structure", "split": s, "patient_id": "p1"} for s in ("train",)]
    rows.append({**rows[0], "split": "test", "patient_id": "p1"})
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "run"
    res = runner.invoke(app, ["train-seg", f"data.manifest={manifest}", "model.encoder=clip3d-tiny", "model.width=8",
                              "data.patch_size=[16,16,16]", "optim.max_steps=3", "optim.batch_size=2",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    masks = tmp_path / "masks"
    res = runner.invoke(app, ["eval", "segment", "-m", str(out / "last"), "-d", str(manifest), "--n-boot", "0",
                              "--masks-out", str(masks), "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    written = list(masks.glob("*.nii.gz"))
    assert len(written) == 1
    pred, ref = nib.load(str(written[0])), nib.load(str(src / "anatomical.nii"))
    assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)
    hd = next(r for r in json.loads((tmp_path / "r.json").read_text()) if r["metric"] == "hd95")
    assert hd["config"]["dims"] == 3


def test_real_hippocampus_volumes(shared_data: Path, tmp_path: Path):
    """MSD hippocampus (real MRI): label-map layout, 3D patches, sliding-window scoring in mm on val cases."""
    from medvl.evaluate.segment import segment_eval

    manifest = shared_data / "real" / "msd_hippocampus" / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"needs the MSD hippocampus manifest at {manifest} (part of ../shared/data/real)")
    cfg = load_seg_config(None, [f"data.manifest={manifest}", "model.encoder=clip3d-tiny", "model.width=8",
                                 "data.patch_size=[24,24,24]", "optim.max_steps=2", "optim.batch_size=2"],
                          tmp_path / "run")
    r = train_segmentation(cfg)
    assert r.n_train_cases == 191 and len(r.losses) == 2
    res = segment_eval(tmp_path / "run" / "last", manifest, "val", n_boot=20, max_cases=2,
                       masks_out=tmp_path / "masks")
    rec = {x.metric: x for x in res.records}
    assert set(rec["dice"].per_class) == {"anterior", "posterior"} and rec["dice"].n == 2
    assert len(list((tmp_path / "masks").glob("*.nii.gz"))) == 2


@pytest.mark.parametrize("column", ["anatomy_mask", "mask"])
def test_3d_ct_phantoms_cli(column: str, tmp_path: Path):
    """3D phantoms (issue 17's `data synth --dims 3`): organ label maps (multiclass) and finding masks (multilabel)."""
    from medvl.data import synthetic3d  # our own module: a broken import must fail, not skip
    manifest = synthetic3d.generate_ct_phantoms(tmp_path / "ct", n=10, size=24)
    out = tmp_path / "run"
    res = runner.invoke(app, ["train-seg", f"data.manifest={manifest}", "model.encoder=clip3d-tiny", "model.width=8",
                              f"data.mask_column={column}", "data.patch_size=[16,16,16]", "optim.max_steps=2",
                              "optim.batch_size=2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval", "segment", "-m", str(out / "last"), "-d", str(manifest), "--n-boot", "10",
                              "--out", str(tmp_path / "r.json"), "--masks-out", str(tmp_path / "masks")])
    assert res.exit_code == 0, res.output
    recs = {r["metric"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    assert recs["dice"]["config"]["dims"] == 3
    assert recs["dice"]["label_task"] == ("multiclass" if column == "anatomy_mask" else "multilabel")
    assert list((tmp_path / "masks").glob("*.nii.gz"))


def test_positive_oversampling_fills_batches_with_findings(seg_phantoms: Path):
    from medvl.segment.data import CaseCache
    from medvl.segment.train import BatchMaker, training_cases

    cfg = load_seg_config(None, tiny_overrides(seg_phantoms))
    manifest, layout, cases = training_cases(cfg)
    cache = CaseCache(manifest, cases, layout)
    plain = BatchMaker(cache, 2, 32, [32, 32, 32], 0.0, 8, seed=0)
    always = BatchMaker(cache, 2, 32, [32, 32, 32], 0.0, 8, seed=0, positive_oversample=1.0)
    _, t_always, _ = always(3)
    assert all(t_always[i].any() for i in range(8))
    assert torch.equal(plain(3)[1], BatchMaker(cache, 2, 32, [32, 32, 32], 0.0, 8, seed=0)(3)[1])  # pure in step
    assert torch.equal(t_always, always(3)[1])
