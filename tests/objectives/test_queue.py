"""Feature queue: FIFO memory of detached past features, used as extra negatives."""

from __future__ import annotations

import math

import pytest
import torch

from medvl.objectives import InfoNCELoss, QueueLoss

from .conftest import make_outputs


def _batch(values: list[float], dim: int = 3) -> torch.Tensor:
    return torch.tensor(values).unsqueeze(1).expand(-1, dim).clone()


def test_fifo_order_and_capacity():
    q = QueueLoss(size=4)
    q.enqueue(_batch([1, 2, 3]), _batch([-1, -2, -3]))
    img, txt = q.queued()
    assert img[:, 0].tolist() == [1, 2, 3] and txt[:, 0].tolist() == [-1, -2, -3]
    q.enqueue(_batch([4, 5]), _batch([-4, -5]))
    img, _ = q.queued()
    assert img[:, 0].tolist() == [2, 3, 4, 5]  # oldest (1) dropped
    q.enqueue(_batch([6, 7, 8, 9, 10]), _batch([0, 0, 0, 0, 0]))
    assert q.queued()[0][:, 0].tolist() == [7, 8, 9, 10]  # a batch larger than the queue keeps its tail
    assert int(q.count) == 4


def test_empty_queue_equals_infonce_then_queue_adds_negatives():
    out = make_outputs(n=4, dim=8)
    q = QueueLoss(size=8)
    first = q(out, {})["loss"]
    torch.testing.assert_close(first, InfoNCELoss()(out, {})["loss"])
    assert int(q.count) == 4
    second = q(out, {})["loss"]
    # the queue now holds the same features again: each positive appears twice among candidates
    img, txt = out["image_features"], out["text_features"]
    s = out["logit_scale"]
    i2t = torch.cat([s * img @ txt.T, s * img @ txt.T], dim=1)
    t2i = torch.cat([s * txt @ img.T, s * txt @ img.T], dim=1)
    labels = torch.arange(4)
    ref = (torch.nn.functional.cross_entropy(i2t, labels) + torch.nn.functional.cross_entropy(t2i, labels)) / 2
    torch.testing.assert_close(second, ref)
    assert second > first


def test_no_enqueue_in_eval_or_no_grad_and_queue_has_no_grad():
    out = make_outputs(grad=True)
    q = QueueLoss(size=8)
    q.eval()
    q(out, {})
    assert int(q.count) == 0
    q.train()
    with torch.no_grad():
        q(out, {})
    assert int(q.count) == 0
    q(out, {})["loss"].backward()
    assert int(q.count) == 4 and not q.image_queue.requires_grad
    out2 = make_outputs(seed=1, grad=True)
    q(out2, {})["loss"].backward()  # would fail if the queue kept the old graph
    assert out2["_raw"][0].grad is not None


def test_state_dict_round_trip_into_lazy_queue():
    q = QueueLoss(size=5)
    q(make_outputs(n=3, dim=6), {})
    fresh = QueueLoss(size=5)
    fresh.load_state_dict(q.state_dict())
    for a, b in zip(q.queued(), fresh.queued(), strict=True):
        torch.testing.assert_close(a, b)
    assert int(fresh.ptr) == 3


def test_bad_size():
    from medvl.errors import ConfigError

    with pytest.raises(ConfigError):
        QueueLoss(size=0)
    assert math.isfinite(QueueLoss(size=1, dim=8)(make_outputs(), {})["loss"].item())
