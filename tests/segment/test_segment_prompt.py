"""Zero-shot text-prompted masks (grounding map -> validation threshold -> largest component); box maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medvl.cli import app
from medvl.errors import MedvlError
from medvl.segment.prompt import box_channel, choose_threshold, mask_box, refine


def test_refine_keeps_the_largest_component_and_threshold_is_chosen_on_pairs():
    heat = np.full((20, 20), 0.3, np.float32)
    heat[2:10, 2:10] = 0.9  # the finding
    heat[15:17, 15:17] = 0.8  # speckle
    m = refine(heat, 0.5)
    assert m[5, 5] and not m[16, 16] and refine(heat, 0.5, keep="all")[16, 16]
    truth = heat > 0.85
    t, curve = choose_threshold([heat], [truth])
    assert curve[t] == 1.0 and 0.3 < t <= 0.9 and curve[0.1] < 1.0


def test_box_channel_refuses_boxes_outside_the_image():
    b = box_channel((2, 3, 6, 8), (10, 10))
    assert b.sum() == 4 * 5 and mask_box(b > 0) == (2, 3, 6, 8)
    with pytest.raises(MedvlError, match=r"box \(2, 3, 16, 8\) is not inside the 10x10 image"):
        box_channel((2, 3, 16, 8), (10, 10))


def test_text_prompt_from_the_cli(seg_phantoms: Path, tmp_path: Path):
    from medvl.models import create_model, save_model

    torch.manual_seed(0)
    rows = [line for line in seg_phantoms.read_text().splitlines()[1:]]
    model = create_model("clip-tiny", image={"image_size": 32, "kwargs": {"output_stride": 8}},
                         tokenizer_texts=rows)
    save_model(model, tmp_path / "clip")
    out = tmp_path / "text.json"
    res = CliRunner().invoke(app, ["eval", "segment", "--prompt", "text", "-m", str(tmp_path / "clip"), "-d",
                                   str(seg_phantoms), "--n-boot", "20", "--out", str(out)])
    assert res.exit_code == 0, res.output
    recs = {r["metric"]: r for r in json.loads(out.read_text())}
    assert {"dice", "iou", "hd95", "nsd"} <= set(recs)
    assert recs["dice"]["task"] == "segment-text" and recs["dice"]["config"]["threshold_split"] == "val"
    assert 0 <= recs["dice"]["value"] <= 1


@pytest.mark.parametrize("prompt", ["box", "text"])
def test_prompted_models_train_and_score(prompt: str, seg_phantoms: Path, tmp_path: Path):
    """Box (MedSAM-style box map) and text (FiLM by the CLIP text embedding) prompted decoders, end to end."""
    from medvl.evaluate.segment import segment_eval
    from medvl.models import create_model, save_model
    from medvl.segment.model import load_seg_model
    from medvl.segment.train import load_seg_config, train_segmentation

    from .conftest import tiny_overrides

    torch.manual_seed(0)
    model = create_model("clip-tiny", image={"image_size": 32}, tokenizer_texts=["lung heart", "the heart"])
    save_model(model, tmp_path / "clip")
    cfg = load_seg_config(None, tiny_overrides(seg_phantoms, steps=3) + [
        f"model.encoder={tmp_path / 'clip'}", f"model.prompt={prompt}",
        # box: the finding masks (many images have none: nothing to prompt there); text: the organ maps
        "data.mask_column=" + ("mask" if prompt == "box" else "anatomy_mask")],
        tmp_path / "run")
    train_segmentation(cfg)
    net = load_seg_model(tmp_path / "run" / "last")
    assert net.prompt == prompt and net.num_outputs == 1
    res = segment_eval(net, seg_phantoms, "test", n_boot=10, max_cases=8)
    rec = {r.metric: r for r in res.records}
    assert rec["dice"].config["prompt"] == prompt
    assert any(0 <= rec[f"dice/{c}"].value <= 1 for c in net.classes)
