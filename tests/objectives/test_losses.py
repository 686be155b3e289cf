"""Each loss against a hand-computed reference, its minimum, and gradient flow."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medvl.errors import ConfigError
from medvl.objectives import InfoNCELoss, MultiPositiveLoss, SigLIPLoss
from medvl.objectives.multipositive import label_targets

from .conftest import make_outputs


def _hand_infonce(img, txt, scale):
    n = len(img)
    sims = [[scale * sum(a * b for a, b in zip(img[i], txt[j], strict=True)) for j in range(n)] for i in range(n)]
    i2t = sum(-sims[i][i] + math.log(sum(math.exp(sims[i][j]) for j in range(n))) for i in range(n)) / n
    t2i = sum(-sims[j][j] + math.log(sum(math.exp(sims[i][j]) for i in range(n))) for j in range(n)) / n
    return (i2t + t2i) / 2


def test_infonce_equals_hand_computed_3x3():
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    txt = torch.tensor([[0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    loss = InfoNCELoss()({"image_features": img, "text_features": txt, "logit_scale": torch.tensor(2.0)}, {})
    assert loss["loss"].item() == pytest.approx(_hand_infonce(img.tolist(), txt.tolist(), 2.0), rel=1e-6)
    # a fixed number, so a wrong reference cannot hide a wrong loss
    assert loss["loss"].item() == pytest.approx(0.8068, abs=5e-4)


def test_infonce_aligned_high_scale_is_near_zero():
    feats = torch.eye(4)
    out = {"image_features": feats, "text_features": feats.clone(), "logit_scale": torch.tensor(100.0)}
    assert InfoNCELoss()(out, {})["loss"].item() < 1e-6
    shuffled = {**out, "text_features": feats[[1, 0, 3, 2]]}
    assert InfoNCELoss()(shuffled, {})["loss"].item() > 50


def test_infonce_gradient_flows_to_features_and_scale():
    out = make_outputs(grad=True)
    scale = torch.tensor(10.0, requires_grad=True)
    out["logit_scale"] = scale
    InfoNCELoss()(out, {})["loss"].backward()
    img, txt = out["_raw"]
    assert img.grad.abs().sum() > 0 and txt.grad.abs().sum() > 0 and scale.grad is not None


def test_siglip_equals_explicit_log_sigmoid_sum():
    out = make_outputs(n=3, scale=10.0, bias=-2.0)
    img, txt = out["image_features"], out["text_features"]
    total = 0.0
    for i in range(3):
        for j in range(3):
            z = 1.0 if i == j else -1.0
            logit = 10.0 * float(img[i] @ txt[j]) - 2.0
            total += math.log(1 / (1 + math.exp(-z * logit)))
    assert SigLIPLoss()(out, {})["loss"].item() == pytest.approx(-total / 3, rel=1e-5)


def test_siglip_minimum_and_needs_bias():
    feats = torch.eye(4)
    out = {"image_features": feats, "text_features": feats, "logit_scale": torch.tensor(100.0),
           "logit_bias": torch.tensor(-50.0)}
    assert SigLIPLoss()(out, {})["loss"].item() < 1e-6
    with pytest.raises(ConfigError, match="logit_bias"):
        SigLIPLoss()({**out, "logit_bias": None}, {})


def test_siglip_gradient_reaches_bias():
    out = make_outputs(bias=-10.0, grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)
    out["logit_bias"] = bias
    SigLIPLoss()(out, {})["loss"].backward()
    assert bias.grad is not None and bias.grad.abs() > 0 and out["_raw"][0].grad.abs().sum() > 0


def test_multipositive_distinct_labels_equals_infonce():
    out = make_outputs(n=4)
    labels = torch.eye(4)
    batch = {"labels": labels, "text": ["a", "b", "c", "d"]}
    for mode in ("hard", "soft"):
        mp = MultiPositiveLoss(mode=mode)(out, batch)["loss"]
        torch.testing.assert_close(mp, InfoNCELoss()(out, {})["loss"])


def test_multipositive_identical_labels_are_positives():
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    targets = label_targets(labels, mode="hard")
    torch.testing.assert_close(targets, torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    # Image 0 shares its findings with report 1: moving image 0 towards text 1 lowers the
    # multipositive loss (a positive) but raises InfoNCE (a negative there).
    txt = F.normalize(torch.tensor([[1.0, 0.2], [0.7, 0.7], [-0.2, 1.0]]), dim=-1)
    batch = {"labels": labels, "text": ["x", "y", "z"]}

    def loss_at(loss_fn, step):
        img = txt.clone()
        img[0] = F.normalize(txt[0] + step * txt[1], dim=-1)
        return loss_fn({"image_features": img, "text_features": txt, "logit_scale": torch.tensor(10.0)},
                       batch)["loss"].item()

    mp, nce = MultiPositiveLoss(), InfoNCELoss()
    assert loss_at(mp, 0.5) < loss_at(mp, 0.0)
    assert loss_at(nce, 0.5) > loss_at(nce, 0.0)


def test_multipositive_identical_captions_and_soft_mode():
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    keys = torch.tensor([1, 1, 2, 3, 4])
    hard = label_targets(labels, keys, mode="hard")
    assert hard[0, 1] == pytest.approx(0.5) and hard[1, 0] == pytest.approx(0.5)  # same caption
    assert hard[3, 4] == pytest.approx(0.5)  # both "no finding"
    soft = label_targets(labels, mode="soft")
    w = 1 / math.sqrt(2)
    torch.testing.assert_close(soft[0], torch.tensor([1.0, 0.0, w, 0.0, 0.0]) / (1 + w))
    torch.testing.assert_close(soft.sum(1), torch.ones(5))
    # -1 (uncertain) maps to `uncertain`
    unc = torch.tensor([[1.0, -1.0], [1.0, 0.0]])
    assert label_targets(unc, mode="hard")[0, 1] == pytest.approx(0.5)
    assert label_targets(unc, mode="hard", uncertain=1.0)[0, 1] == 0
    out = make_outputs(n=2)
    batch = {"labels": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "text": ["Effusion.", "  effusion. "]}
    infonce = InfoNCELoss()(out, {})["loss"]
    assert not torch.allclose(MultiPositiveLoss()(out, batch)["loss"], infonce)
    torch.testing.assert_close(MultiPositiveLoss(same_text_positive=False)(out, batch)["loss"], infonce)


def test_multipositive_uses_input_ids_and_needs_labels():
    out = make_outputs(n=3)
    ids = torch.tensor([[2, 5, 3], [2, 5, 3], [2, 6, 3]])
    batch = {"labels": torch.eye(3), "input_ids": ids}
    ref = {"labels": torch.eye(3), "text": ["a", "a", "b"]}
    torch.testing.assert_close(MultiPositiveLoss()(out, batch)["loss"], MultiPositiveLoss()(out, ref)["loss"])
    with pytest.raises(ConfigError, match="labels"):
        MultiPositiveLoss()(out, {})
    out = make_outputs(grad=True)
    MultiPositiveLoss()(out, {"labels": torch.ones(4, 2)})["loss"].backward()
    assert out["_raw"][0].grad.abs().sum() > 0


def test_missing_outputs_are_named():
    with pytest.raises(ConfigError, match="text_features"):
        InfoNCELoss()({"image_features": torch.eye(2), "logit_scale": torch.tensor(1.0)}, {})


def test_soft_targets_are_row_stochastic_and_loss_finite_with_nan_labels():
    labels = torch.tensor([[1.0, float("nan")], [1.0, 0.0], [0.0, 1.0]])
    t = label_targets(labels, mode="soft")
    assert torch.isfinite(t).all()
    torch.testing.assert_close(t.sum(1), torch.ones(3))
    out = make_outputs(n=3)
    assert torch.isfinite(MultiPositiveLoss(mode="soft")(out, {"labels": labels})["loss"])
