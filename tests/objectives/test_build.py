"""build_objective: weighted sum with per-component values, clear errors for bad specs."""

from __future__ import annotations

import pytest
import torch

from medvl.errors import ConfigError
from medvl.objectives import InfoNCELoss, MultiPositiveLoss, build_objective

from .conftest import make_outputs


def test_weighted_sum_and_components():
    obj = build_objective([{"name": "infonce", "weight": 1.0},
                           {"name": "multipositive", "weight": 0.5, "mode": "soft"}])
    out = make_outputs(n=4)
    batch = {"labels": torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 0]]), "text": list("abcd")}
    res = obj(out, batch)
    nce = InfoNCELoss()(out, batch)["loss"]
    mp = MultiPositiveLoss(mode="soft")(out, batch)["loss"]
    torch.testing.assert_close(res["infonce"], nce)
    torch.testing.assert_close(res["multipositive"], mp)
    torch.testing.assert_close(res["loss"], nce + 0.5 * mp)


def test_shorthands_and_duplicates():
    assert set(build_objective("infonce")(make_outputs(), {})) == {"loss", "infonce"}
    obj = build_objective([{"name": "infonce"}, {"name": "infonce", "weight": 2.0, "label_smoothing": 0.1}])
    assert set(obj(make_outputs(), {})) == {"loss", "infonce", "infonce_2"}
    res = build_objective(["siglip"])(make_outputs(bias=-10.0), {})
    assert torch.isfinite(res["loss"])


def test_errors_list_valid_choices():
    valid = "caption, describe, distill, infonce, local, mim, mlm, multipositive, queue, siglip"
    with pytest.raises(ConfigError, match=f"valid: {valid}"):
        build_objective([{"name": "triplet"}])
    with pytest.raises(ConfigError, match="valid keys: name, weight, mode, uncertain, same_text_positive"):
        build_objective([{"name": "multipositive", "temperature": 0.1}])
    with pytest.raises(ConfigError, match="weight"):
        build_objective([{"name": "infonce", "weight": "high"}])
    with pytest.raises(ConfigError, match="at least one"):
        build_objective([])
