"""Corruptions: shapes kept, range kept, monotone in severity, deterministic, skipped where they do not apply."""

from __future__ import annotations

import pytest
import torch

from medvl.errors import ConfigError
from medvl.evaluate.corruptions import CORRUPTIONS, corrupt, get_corruption


def _images(shape: tuple[int, ...]) -> torch.Tensor:
    h, w = shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    x = (0.4 + 0.15 * torch.sin(xx / 2.5) * torch.cos(yy / 3.5)).expand(shape).clone()
    x[..., h // 4: h // 2, w // 4: w // 2] += 0.4  # a bright structure so blur/shift/rotation change pixels
    return x.clamp(0, 1)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_corruption_grows_with_severity_2d(name: str) -> None:
    x = _images((6, 1, 32, 32))
    diffs = []
    for sev in range(1, 6):
        y = corrupt(x, name, sev, seed=1)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        diffs.append(float((y - x).abs().mean()))
    assert diffs[0] > 0
    assert diffs[-1] > diffs[0] * 1.5, diffs
    assert all(b >= a * 0.9 for a, b in zip(diffs[:-1], diffs[1:], strict=True)), diffs  # (nearly) monotone
    assert torch.equal(corrupt(x, name, 3, seed=1), corrupt(x, name, 3, seed=1))


@pytest.mark.parametrize("name", [n for n, c in CORRUPTIONS.items() if 3 in c.dims])
def test_3d_volumes_keep_their_shape(name: str) -> None:
    x = _images((2, 1, 8, 16, 16))
    y = corrupt(x, name, 4)
    assert y.shape == x.shape and not torch.equal(y, x)


def test_rgb_jpeg_and_blur() -> None:
    x = _images((2, 3, 32, 32))
    assert corrupt(x, "jpeg", 5).shape == x.shape
    assert corrupt(x, "gaussian_blur", 5).std() < x.std()


def test_modality_specific_corruptions_say_why_they_are_skipped() -> None:
    bias, window = get_corruption("bias_field"), get_corruption("window_shift")
    assert bias.skip_reason("MRI", 2) is None and window.skip_reason("CT", 3) is None
    assert "these images are x-ray" in bias.skip_reason("x-ray", 2)
    assert "specific to" in window.skip_reason("ultrasound", 2)
    assert "not recorded" in bias.skip_reason("unknown", 2)
    assert "3D" in get_corruption("jpeg").skip_reason("ct", 3)
    assert get_corruption("gaussian_noise").skip_reason("xray", 2) is None


def test_bad_names_and_severities() -> None:
    with pytest.raises(ConfigError, match="unknown corruption 'snow'"):
        get_corruption("snow")
    with pytest.raises(ConfigError, match="severity must be 1-5"):
        corrupt(_images((1, 1, 8, 8)), "gamma", 6)
