"""Segmentation thumbnails in the bench report: a suite with a ``segment`` task on anatomy phantoms
(random timm tower, 20 head steps) renders predicted vs true outlines whose Dice is the scored one;
the drawing, the slice choice and the fail-soft paths on their own."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medvl.bench.segment_figures import (
    PRED_RGB,
    TRUTH_RGB,
    SegExample,
    outline_png,
    pick_slice,
    segment_examples,
    segment_examples_html,
)

PNG_URI = re.compile(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'")


@pytest.fixture(scope="module")
def seg_bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished bench: 40 anatomy phantoms (32 px), one ``segment`` job on the lung/heart label maps."""
    from medvl.bench.runner import run_suite
    from medvl.bench.suite import suite_from_dict
    from medvl.data.synthetic import generate_phantoms

    root = tmp_path_factory.mktemp("segfig")
    manifest = generate_phantoms(root / "data", n=40, size=32, anatomy=True)
    suite = {
        "name": "segfig",
        "datasets": {"ph": {"manifest": str(manifest)}},
        "models": {"rand": {"encoder": "timm:test_resnet", "options": {"in_chans": 1, "image_size": 32}}},
        "tasks": [{"type": "segment", "dataset": "ph",
                   "params": {"steps": 20, "batch_size": 8, "width": 16, "lr": 0.05,
                              "mask_column": "anatomy_mask"}}],
        "seeds": [0],
        "bootstrap": 0,
    }
    out = root / "bench"
    outcome = run_suite(suite_from_dict(suite), out)
    assert not outcome.failed, outcome.failed
    (result,) = sorted((out / "results").glob("*.json"))
    return {"manifest": manifest, "out": out, "result": result, "suite": suite}


def _rgb(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG" and img.mode == "RGB"
    return np.asarray(img)


def _has(img: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool(np.all(img == np.array(rgb, np.uint8), axis=-1).any())


def test_report_shows_outlines_with_the_scored_dice(seg_bench: dict[str, Any]) -> None:
    from medvl.evaluate.results import load_results

    page = (seg_bench["out"] / "report.html").read_text()
    start = page.index("<h3>Segmentation examples (test split)</h3>")
    section = page[start:page.index("</section>", start)]
    assert "cyan line" in section and "magenta line" in section and "seed 0" in section
    captions = re.findall(r"<figcaption><b>(\w+)</b> — Dice ([0-9.]+)", section)
    assert {c for c, _ in captions} == {"lung", "heart"}
    pngs = [_rgb(base64.b64decode(b)) for b in PNG_URI.findall(section)]
    assert len(pngs) == len(captions) == 8  # 4 cases x (lung, heart): every phantom shows both organs
    assert all(p.shape == (96, 96, 3) for p in pngs)
    assert any(_has(p, TRUTH_RGB) and _has(p, PRED_RGB) for p in pngs)

    # the thumbnails' Dice are the per-case values the evaluator scored for those rows
    (res,) = load_results(seg_bench["result"])
    preds = res.predictions
    assert preds is not None
    ck = res.records[0].config["seg_checkpoint"]
    assert not Path(ck).is_absolute() and (seg_bench["out"] / ck / "weights.safetensors").is_file()
    examples = segment_examples(seg_bench["out"] / ck, seg_bench["manifest"], "test")
    rows = list(np.asarray(preds.rows))
    for ex in examples:
        assert ex.dice == pytest.approx(float(preds.extra[f"dice/{ex.cls}"][rows.index(ex.row)]))
    assert [f"{e.dice:.2f}" for e in examples] == [d for _, d in captions]
    assert [e.row for e in examples][::2] == sorted(rows)[:4]  # the first four test rows, in manifest order


def test_outline_draws_truth_outside_and_prediction_inside() -> None:
    grey = np.full((8, 8), 0.4, np.float32)
    truth = np.zeros((8, 8), bool)
    truth[2:6, 2:6] = True
    pred = truth.copy()
    img = _rgb(outline_png(grey, truth, pred, size=32))  # 4 px per pixel: the mask spans rows/cols 8-23
    assert tuple(img[7, 12]) == TRUTH_RGB  # just outside the top edge
    assert tuple(img[8, 12]) == PRED_RGB  # just inside it
    assert tuple(img[15, 15]) == (102, 102, 102)  # inside both: the plain grey image
    assert tuple(img[1, 1]) == (102, 102, 102)
    wide = _rgb(outline_png(np.zeros((4, 8), np.uint8), np.zeros((4, 8), bool), np.zeros((4, 8), bool), size=32))
    assert wide.shape == (16, 32, 3)  # aspect kept, longest side = size
    with pytest.raises(ValueError, match="2D"):
        outline_png(grey, truth[:4], pred)


def test_volume_slice_is_the_largest_true_area() -> None:
    truth = np.zeros((6, 6, 5), bool)
    truth[1:3, 1:3, 1] = True
    truth[0:5, 0:5, 3] = True
    pred = np.zeros_like(truth)
    pred[:, :, 4] = True
    assert pick_slice(truth, pred) == 3
    assert pick_slice(np.zeros_like(truth), pred) == 4  # no truth: where the prediction is largest
    assert pick_slice(np.zeros_like(truth), np.zeros_like(truth)) == 2  # nothing at all: the middle


def test_html_escapes_and_reports_reasons() -> None:
    ex = SegExample(image="images/<a>.png", row=3, cls="heart", dice=0.5, truth_empty=False, pred_empty=False,
                    slice_index=7, png=b"\x89PNG")
    page = segment_examples_html([("m<1>", (2, [ex])), ("m2", "no trained checkpoint"), ("m3", (0, []))])
    assert "m&lt;1&gt;" in page and "&lt;a&gt;.png, slice 7" in page and "Dice 0.50" in page
    assert "no examples: no trained checkpoint" in page and "no case with a mask" in page
    assert "data:image/png;base64,iVBORw" in page
    assert segment_examples_html([]) == ""


def test_a_missing_checkpoint_is_a_reason_not_a_failure(seg_bench: dict[str, Any]) -> None:
    from medvl.bench.segment_figures import bench_segment_examples
    from medvl.bench.suite import suite_from_dict
    from medvl.evaluate.results import load_results

    (res,) = load_results(seg_bench["result"])
    for rec in res.records:
        rec.config = {**rec.config, "seg_checkpoint": "results/gone-segrun/checkpoints/step_000020"}
    old = load_results(seg_bench["result"])[0]
    for rec in old.records:
        rec.config = {k: v for k, v in rec.config.items() if k != "seg_checkpoint"}
    suite = suite_from_dict(seg_bench["suite"])
    key = ("segment", "ph", "test")
    got = bench_segment_examples(suite, [(key, {"rand": [(0, res)]})], {"ph": seg_bench["manifest"]},
                                 seg_bench["out"])
    assert isinstance(got[key][0][1], str) and "is gone" in got[key][0][1]
    got = bench_segment_examples(suite, [(key, {"rand": [(0, old)]})], {"ph": seg_bench["manifest"]},
                                 seg_bench["out"])
    assert "no seg_checkpoint" in got[key][0][1]


def test_volumes_show_the_slice_of_largest_true_area(tmp_path: Path) -> None:
    """3D CT phantoms, clip3d-tiny + head (2 steps): one slice per (case, class), Dice as segment_eval scores it."""
    from medvl.data import synthetic3d  # our own module: a broken import must fail, not skip
    from medvl.evaluate.segment import segment_eval
    from medvl.segment.data import CaseCache, open_dataset, seg_cases, seg_layout
    from medvl.segment.train import load_seg_config, train_segmentation

    manifest = synthetic3d.generate_ct_phantoms(tmp_path / "ct", n=10, size=24)
    cfg = load_seg_config(None, [f"data.manifest={manifest}", "model.encoder=clip3d-tiny", "model.width=8",
                                 "data.mask_column=anatomy_mask", "data.patch_size=[16,16,16]", "optim.max_steps=2",
                                 "optim.batch_size=2"], tmp_path / "run")
    train_segmentation(cfg)
    examples = segment_examples(tmp_path / "run" / "last", manifest, "test", n=1)
    assert examples and all(e.slice_index is not None for e in examples)
    assert len({e.row for e in examples}) == 1
    res = segment_eval(tmp_path / "run" / "last", manifest, "test", n_boot=0, max_cases=1)
    assert res.predictions is not None
    man = open_dataset(manifest)
    layout = seg_layout(man, None, "anatomy_mask")
    (case,) = [c for c in seg_cases(man, "test", layout) if c.row == examples[0].row]
    target = CaseCache(man, [case], layout)[0].target
    for e in examples:
        assert e.dice == pytest.approx(float(res.predictions.extra[f"dice/{e.cls}"][0]))
        truth = target[layout.classes.index(e.cls)]
        if truth.any():
            assert e.slice_index == int(np.argmax(truth.reshape(-1, truth.shape[-1]).sum(0)))
        assert _rgb(e.png).shape[2] == 3
