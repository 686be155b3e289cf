"""Grounding thumbnails in the bench report: the figure function on phantoms with a random tiny CLIP,
the report with and without grounding results, and family members reduced to the first one."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medvl.bench.grounding_figures import (
    GroundingExample,
    bench_grounding_examples,
    examples_html,
    grounding_examples,
    overlay_png,
    shown_models,
)
from medvl.bench.runner import run_suite
from medvl.bench.suite import suite_from_dict

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STRIDE8 = {"kwargs": {"output_stride": 8}}  # test_resnet at 64 px: an 8x8 patch grid


@pytest.fixture(scope="module")
def phantoms(grounding_set: dict[str, Any]) -> dict[str, Any]:
    findings: list[str] = []  # distinct findings of the test split in manifest order (every phantom mask is usable)
    for r in grounding_set["rows"]:
        if r["split"] == "test" and r["mask"]:
            findings += [f for f in r["mask_labels"].split("|") if f not in findings]
    return {**grounding_set, "findings": findings}


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE)
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG" and img.mode == "RGB"
    return img.size


def test_examples_are_pngs_of_the_requested_size_one_per_finding(phantoms: dict[str, Any]) -> None:
    assert len(phantoms["findings"]) >= 2
    ex = grounding_examples(phantoms["model"], phantoms["manifest"], "test", size=80)
    assert [e.finding for e in ex] == phantoms["findings"][:4]
    assert all(_png_size(e.png) == (80, 80) for e in ex)
    assert all(e.phrase and isinstance(e.hit, bool) for e in ex)
    two = grounding_examples(phantoms["model"], phantoms["manifest"], "test", n=2)
    assert [e.finding for e in two] == phantoms["findings"][:2]
    assert _png_size(two[0].png) == (96, 96)  # default thumbnail size
    again = grounding_examples(phantoms["model"], phantoms["manifest"], "test", n=2)
    assert [e.png for e in again] == [e.png for e in two]  # deterministic


def test_hits_agree_with_the_evaluated_pointing_game(phantoms: dict[str, Any]) -> None:
    from medvl.evaluate.grounding import grounding_eval

    res = grounding_eval(str(phantoms["model"]), phantoms["manifest"], "test", n_boot=0, temperature=5.0)
    assert res.predictions is not None
    per_pair = dict(zip(res.predictions.ids, res.predictions.extra["pointing_game"], strict=True))
    for e in grounding_examples(phantoms["model"], phantoms["manifest"], "test", temperature=5.0):
        assert per_pair[f"{e.image}#{e.finding}"] == float(e.hit)


def test_overlay_draws_outline_and_maximum() -> None:
    grey = np.full((8, 8), 100, np.uint8)
    heat = np.zeros((8, 8))
    heat[2, 5] = 1.0
    mask = np.zeros((8, 8), bool)
    mask[1:4, 4:7] = True
    img = np.asarray(Image.open(io.BytesIO(overlay_png(grey, heat, mask, size=32))))
    assert img.shape == (32, 32, 3)
    assert tuple(img[4, 20]) == (0, 229, 255)  # top edge of the mask (rows 4-15, columns 16-27 at 32 px)
    assert tuple(img[10, 22]) == (0, 0, 0)  # the + at cell (2, 5): pixel (10, 22)
    assert tuple(img[28, 4]) == (100, 100, 100)  # no attention, no mask: the plain grey image
    with pytest.raises(ValueError, match="differ in shape"):
        overlay_png(grey, heat[:4], mask)


def _suite(phantoms: dict[str, Any], tasks: list[dict]) -> dict:
    return {"name": "gfig", "datasets": {"ph": {"manifest": str(phantoms["manifest"])}},
            "models": {"clip": {"encoder": str(phantoms["model"])}}, "tasks": tasks, "seeds": [0], "bootstrap": 20}


def test_report_shows_thumbnails_for_grounding_results(phantoms: dict[str, Any], tmp_path: Path) -> None:
    outcome = run_suite(suite_from_dict(_suite(phantoms, [{"type": "grounding", "dataset": "ph"}])), tmp_path)
    assert not outcome.failed
    page = (tmp_path / "report.html").read_text()
    assert "Grounding examples (test split)" in page
    n = min(4, len(phantoms["findings"]))
    thumbs = re.findall(r"<figure class='gfig'><img alt='clip: attention map of the phrase [^']+' title='[^']*' "
                        r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'>", page)
    assert len(thumbs) == n
    import base64

    assert all(_png_size(base64.b64decode(t)) == (96, 96) for t in thumbs)
    assert page.count("pointing hit") + page.count("pointing miss") == n
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)  # self-contained


@pytest.mark.filterwarnings("ignore:class .* no positive sample")  # 40 phantoms: some classes absent from test
def test_report_without_grounding_results_has_no_thumbnails(phantoms: dict[str, Any], tmp_path: Path) -> None:
    outcome = run_suite(suite_from_dict(_suite(phantoms, [{"type": "zeroshot", "dataset": "ph"}])), tmp_path)
    assert not outcome.failed
    page = (tmp_path / "report.html").read_text()
    assert "zeroshot" in page and "Grounding examples" not in page and "class='gfig'" not in page
    assert examples_html([]) == ""


def test_families_show_their_first_member_and_a_missing_checkpoint_is_a_note(phantoms: dict[str, Any],
                                                                             tmp_path: Path) -> None:
    data = _suite(phantoms, [{"type": "grounding", "dataset": "ph"}])
    data["models"]["fam"] = {"train": "cfg.yaml", "train_seeds": [3, 1]}
    suite = suite_from_dict(data)
    assert shown_models(suite, ["fam@3", "fam@1", "clip"]) == ["fam@3", "clip"]
    key = ("grounding", "ph", "test")
    rows = bench_grounding_examples(suite, [(key, {"fam@3": [], "fam@1": [], "clip": []})],
                                    {"ph": phantoms["manifest"]}, tmp_path, n=1)
    (fam, why), (clip, examples) = rows[key]
    assert fam == "fam@3" and isinstance(why, str) and clip == "clip"
    assert isinstance(examples, list) and len(examples) == 1 and isinstance(examples[0], GroundingExample)
    frag = examples_html(rows[key])
    assert "fam@3" in frag and "no examples:" in frag and "fam@1" not in frag and frag.count("<figure") == 1
