"""Transforms: exact intensity numbers, 2D/3D geometry, channels, no flip by default, flip + laterality."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medvl.data.transforms import (
    Normalize,
    RandomAffine,
    RandomHorizontalFlip,
    build_transforms,
    center_pad,
    laterality_pairs,
    minmax,
    normalize,
    percentile_clip,
    prepare_uint8,
    resize,
    swap_laterality,
    to_channels,
    window,
    zscore,
)
from medvl.errors import ConfigError


def test_window_maps_the_window_to_unit_range_exactly() -> None:
    hu = torch.tensor([[[-1000.0, -160.0, 40.0, 140.0, 240.0, 3000.0]]])
    out = window(hu, center=40, width=400)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.0, 0.5, 0.75, 1.0, 1.0]]]))
    with pytest.raises(ConfigError, match="width"):
        window(hu, 40, 0)


def test_zscore_minmax_percentile_numbers() -> None:
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    std = math.sqrt(1.25)  # population std of 1..4
    torch.testing.assert_close(zscore(x), (x - 2.5) / std)
    z = zscore(torch.rand(1, 8, 8) * 7 + 3)
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std(correction=0)) - 1) < 1e-5
    torch.testing.assert_close(minmax(x), torch.tensor([[[0.0, 1 / 3, 2 / 3, 1.0]]]))
    assert torch.equal(minmax(torch.full((1, 2, 2), 7.0)), torch.zeros(1, 2, 2))  # constant image
    ramp = torch.arange(101.0).view(1, 1, 101)
    clipped = percentile_clip(ramp, 10, 90, rescale=False)
    assert float(clipped.min()) == 10.0 and float(clipped.max()) == 90.0
    torch.testing.assert_close(percentile_clip(ramp, 10, 90)[0, 0, 50], torch.tensor(0.5))
    with pytest.raises(ConfigError):
        percentile_clip(ramp, 90, 10)


def test_normalize_per_channel_and_bad_lengths() -> None:
    x = torch.ones(3, 2, 2)
    out = normalize(x, (0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    assert out[:, 0, 0].tolist() == [1.0, 3.0, 0.5]
    assert torch.equal(normalize(torch.ones(1, 2, 2, 2), (0.5,), (0.5,)), torch.ones(1, 2, 2, 2))  # 3D volume
    with pytest.raises(ConfigError, match="2 values"):
        normalize(x, (0.5, 0.5), (0.5,))
    with pytest.raises(ConfigError, match="std"):
        normalize(x, (0.5,), (0.0,))
    with pytest.raises(ConfigError):
        Normalize((0.5,), None)


@pytest.mark.parametrize(
    ("shape", "size", "mode", "expected"),
    [
        ((1, 30, 20), 64, "pad", (1, 64, 64)),
        ((1, 30, 20), 16, "crop", (1, 16, 16)),
        ((3, 50, 70), (32, 48), "stretch", (3, 32, 48)),
        ((1, 10, 12, 14), 16, "pad", (1, 16, 16, 16)),
        ((1, 10, 12, 14), 8, "stretch", (1, 8, 8, 8)),
        ((1, 40, 40, 40), 16, "crop", (1, 16, 16, 16)),
    ],
)
def test_resize_shapes_2d_3d(shape: tuple[int, ...], size: int, mode: str, expected: tuple[int, ...]) -> None:
    assert tuple(resize(torch.rand(shape), size, mode).shape) == expected


def test_resize_pad_keeps_aspect_and_is_a_noop_at_size() -> None:
    x = torch.ones(1, 32, 16)
    out = resize(x, 64, "pad")
    assert out[0, :, :16].abs().sum() == 0 and out[0, :, -16:].abs().sum() == 0  # padded sides
    assert torch.allclose(out[0, :, 16:48], torch.ones(64, 32))
    y = torch.rand(1, 64, 64)
    assert resize(y, 64) is y
    assert tuple(center_pad(torch.ones(1, 3, 3), 5).shape) == (1, 5, 5)
    with pytest.raises(ConfigError):
        resize(y, 64, "zoom")
    with pytest.raises(ConfigError):
        resize(y, (8, 8, 8))  # 3 sizes for a 2D image


def test_channels_one_to_three_and_back() -> None:
    grey = torch.rand(1, 4, 4)
    rgb = to_channels(grey, 3)
    assert rgb.shape == (3, 4, 4) and torch.equal(rgb[0], rgb[2])
    torch.testing.assert_close(to_channels(rgb, 1), grey)  # weights sum to 1
    red = torch.zeros(3, 2, 2)
    red[0] = 1.0
    torch.testing.assert_close(to_channels(red, 1), torch.full((1, 2, 2), 0.299))
    with pytest.raises(ConfigError):
        to_channels(torch.rand(2, 4, 4), 3)


def test_prepare_uint8_layouts() -> None:
    assert tuple(prepare_uint8(np.zeros((20, 30), np.uint8), 16).shape) == (1, 16, 16)
    assert tuple(prepare_uint8(np.zeros((20, 30, 3), np.uint8), 16, channels=3).shape) == (3, 16, 16)
    assert tuple(prepare_uint8(np.zeros((20, 30, 3), np.uint8), 16, channels=1).shape) == (1, 16, 16)
    vol = prepare_uint8(np.zeros((10, 12, 14), np.uint8), 8)
    assert tuple(vol.shape) == (1, 8, 8, 8) and vol.dtype == torch.uint8
    with pytest.raises(ValueError):
        prepare_uint8(np.zeros((4, 4), np.float32), 8)


def _asymmetric(size: int = 32) -> torch.Tensor:
    img = torch.zeros(1, size, size, dtype=torch.uint8)
    img[:, :, : size // 4] = 255  # a bright band on the image's left side only
    return img


def test_default_pipeline_never_flips_even_with_augment() -> None:
    tf = build_transforms(32, channels=1, augment=True, mean=(0.0,), std=(1.0,), degrees=0.0, translate=0.0,
                          scale=(1.0, 1.0), p=1.0)
    assert not any(isinstance(t, RandomHorizontalFlip) for t in tf.transforms)
    for seed in range(20):
        out = tf({"image": _asymmetric(), "text": "left effusion"}, torch.Generator().manual_seed(seed))
        assert out["text"] == "left effusion"
        assert out["image"][0, :, :8].mean() > out["image"][0, :, -8:].mean()  # band still on the left


def test_flip_moves_image_and_caption_together() -> None:
    tf = build_transforms(32, augment=False, mean=(0.0,), std=(1.0,), hflip=True, hflip_p=1.0,
                          classes=["lung-left", "lung-right", "heart"])
    labels = torch.tensor([1.0, 0.0, 1.0])
    sample = {"image": _asymmetric(), "text": "Left lower lobe opacity; right-sided effusion; LEFT marker; leftover",
              "labels": labels, "label_mask": torch.tensor([1.0, 0.0, 1.0])}
    out = tf(sample)
    expected = torch.flip(_asymmetric().float() / 255, dims=[-1])
    assert torch.equal(out["image"], expected)
    assert out["text"] == "Right lower lobe opacity; left-sided effusion; RIGHT marker; leftover"
    assert out["labels"].tolist() == [0.0, 1.0, 1.0]
    assert out["label_mask"].tolist() == [0.0, 1.0, 1.0]
    # p=0: nothing changes
    out0 = build_transforms(32, mean=(0.0,), std=(1.0,), hflip=True, hflip_p=0.0)(
        {"image": _asymmetric(), "text": "left"})
    assert out0["text"] == "left" and torch.equal(out0["image"], _asymmetric().float() / 255)


def test_swap_laterality_edge_cases() -> None:
    assert swap_laterality("bright light, leftward shift, Right") == "bright light, rightward shift, Left"
    assert swap_laterality("no side") == "no side"
    assert laterality_pairs(["kidney-left", "liver", "kidney-right"]) == [(0, 2)]


def test_augment_is_reproducible_per_generator_and_keeps_3d_shape() -> None:
    tf = build_transforms(16, augment=True, p=1.0)
    img = (torch.rand(1, 16, 16) * 255).to(torch.uint8)
    a = tf({"image": img.clone()}, torch.Generator().manual_seed(3))["image"]
    b = tf({"image": img.clone()}, torch.Generator().manual_seed(3))["image"]
    c = tf({"image": img.clone()}, torch.Generator().manual_seed(4))["image"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    vol = (torch.rand(1, 12, 12, 12) * 255).to(torch.uint8)
    out = tf({"image": vol}, torch.Generator().manual_seed(0))["image"]
    assert out.shape == (1, 16, 16, 16) and out.dtype == torch.float32
    rot = RandomAffine(degrees=0.0, translate=0.0, scale=(1.0, 1.0), p=1.0)
    v = torch.rand(1, 8, 8, 8)
    torch.testing.assert_close(rot({"image": v.clone()})["image"], v, atol=1e-5, rtol=0)  # identity affine


def test_build_transforms_intensity_options() -> None:
    hu = torch.tensor([[[-1000.0, 40.0], [240.0, 500.0]]])
    out = build_transforms(2, mean=(0.0,), std=(1.0,), window=(40, 400))({"image": hu})["image"]
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.5], [1.0, 1.0]]]))
    z = build_transforms(2, mean=None, std=None)({"image": torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])})["image"]
    torch.testing.assert_close(z.flatten(), (torch.tensor([1.0, 2.0, 3.0, 4.0]) - 2.5) / math.sqrt(1.25))
    with pytest.raises(ConfigError):
        build_transforms(8, intensity="window")  # window without centre/width
    with pytest.raises(ConfigError):
        build_transforms(8, intensity="histogram")
    with pytest.raises(ConfigError):
        build_transforms(8, channels=2)


def test_normalize_transform_checks_channels_and_marks_randomness() -> None:
    with pytest.raises(ConfigError, match="3 channels"):
        Normalize((0.5, 0.5), (0.5, 0.5))({"image": torch.zeros(3, 2, 2)})
    with pytest.raises(ConfigError, match="std"):
        Normalize((0.5,), (-1.0,))
    assert not build_transforms(8).random and build_transforms(8, augment=True).random
    assert build_transforms(8, hflip=True).random
