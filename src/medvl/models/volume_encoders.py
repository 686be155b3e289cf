"""3D image encoders: ``resnet3d:``, ``acs:`` and ``2.5d:`` schemas for volumes ``[B, C, D, H, W]``.

Why: the MedMNIST v2 paper's 3D baselines are a 2D ResNet turned into a 3D network three ways
(Yang et al. 2023, with the ACSConv converters of Yang et al. 2021). This module rebuilds those
networks from a timm 2D ResNet so one name gives the same model to ``eval finetune``,
``linear-probe``, ``knn`` and bench suites:

* ``resnet3d:resnet18`` — every ``Conv2d`` becomes a full ``Conv3d`` (k x k x k). Random init
  follows the paper's code: PyTorch's default 2D init, then I3D inflation (the 2D kernel repeated
  along depth and divided by its depth), as ACSConv's ``Conv3dConverter(i3d_repeat_axis=-3)``.
* ``acs:resnet18`` (= ``resnet3d:resnet18?conv=acs``) — ACS convolutions: the 2D kernels of a
  layer are split in three groups of output channels applied as axial (1 x k x k), coronal
  (k x 1 x k) and sagittal (k x k x 1) 3D kernels; 2D weights carry over unchanged, which is
  what makes ImageNet-pretrained 2D weights useful for volumes.
* ``resnet3d:resnet18?conv=2.5d`` — the paper's "2.5D" converter: every kernel is 1 x k x k.
* ``2.5d:resnet18`` — a 2D timm tower on each slice along depth, slice features pooled
  (mean or max): the common "2.5D" baseline for CT where a 2D foundation model is reused as is.

Spec grammar: ``<schema>:<timm resnet>[@weights.safetensors][?key=value&...]``; keys: ``conv``
(3d|acs|2.5d), ``stem`` (small|imagenet; small = the paper's 3x3/1 stem without max-pool, the
default, so a 28^3 volume keeps 28^3 in the first stage), ``init`` (torch|timm, random init only),
``size`` (input cube side, default 28), ``in_chans`` (default 1), ``pool`` (2.5d only: mean|max).
``image_size=``/``in_chans=`` keyword arguments (the CLI's ``--image-size/--in-chans``) do the same.

Inputs follow the MedMNIST 3D code: volumes scaled to [0, 1] with no further normalisation
(mean 0, std 1) for random init; with a weights file, timm's pretrained statistics (averaged over
RGB for one channel). Norm layers stay BatchNorm (the paper's choice; batch 32).
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import parse_qsl

import torch
import torch.nn.functional as F
from torch import nn

from medvl.errors import ConfigError
from medvl.models.encoder import Encoder, register_encoder_schema

CONVS = ("3d", "acs", "2.5d")
STEMS = ("small", "imagenet")
INITS = ("torch", "timm")
POOLS = ("mean", "max")


# ------------------------------------------------------------------------------ ACS convolution
class ACSConv3d(nn.Module):
    """Axial-coronal-sagittal convolution holding a 2D kernel ``[O, I/g, k, k]``.

    Output channels are split in three near-equal groups (the first groups get the remainder, as
    in ACSConv); group a convolves with ``1 x k x k``, c with ``k x 1 x k``, s with ``k x k x 1``.
    Stride applies on all three axes. Padding must be "same" (``k // 2``) so the three branches
    give one output shape — true for every ResNet conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = True, device: str | torch.device | None = None):
        super().__init__()
        if groups != 1:
            raise ConfigError("ACS convolution supports groups=1 only (ResNet-style backbones)")
        if padding != dilation * (kernel_size // 2):
            raise ConfigError(f"ACS convolution needs 'same' padding (kernel {kernel_size}, padding {padding})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size, device=device))
        self.bias = nn.Parameter(torch.empty(out_channels, device=device)) if bias else None
        third = out_channels // 3
        self.split = (third + (out_channels % 3 > 0), third + (out_channels % 3 > 1), third)
        if torch.device(device or "cpu").type != "meta":
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default Conv2d init (the 2D layer this replaces)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels * self.kernel_size ** 2)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, c, _ = self.split
        w = self.weight
        p, s, d = self.padding, self.stride, self.dilation
        outs = []
        if a:
            outs.append(F.conv3d(x, w[:a].unsqueeze(2), None, s, (0, p, p), d))
        if c:
            outs.append(F.conv3d(x, w[a:a + c].unsqueeze(3), None, s, (p, 0, p), d))
        if self.split[2]:
            outs.append(F.conv3d(x, w[a + c:].unsqueeze(4), None, s, (p, p, 0), d))
        out = torch.cat(outs, dim=1)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1, 1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, split={self.split}")


# ------------------------------------------------------------------------------ 2D -> 3D conversion
def _single(value: Any, what: str, layer: str) -> int:
    vals = set(value) if isinstance(value, tuple) else {value}
    if len(vals) != 1:
        raise ConfigError(f"cannot convert {layer}: non-square {what} {value}")
    return int(next(iter(vals)))


def _convert_conv(conv: nn.Conv2d, mode: str, name: str) -> nn.Module:
    k = _single(conv.kernel_size, "kernel", name)
    s = _single(conv.stride, "stride", name)
    p = _single(conv.padding, "padding", name)
    d = _single(conv.dilation, "dilation", name)
    bias = conv.bias is not None
    w = conv.weight.detach()
    # Built on the meta device, then given the converted tensors: no wasted random init of 3D kernels.
    if mode == "acs":
        new: nn.Module = ACSConv3d(conv.in_channels, conv.out_channels, k, s, p, d, conv.groups, bias, device="meta")
        weight = w.clone()
    elif mode == "2.5d":
        new = nn.Conv3d(conv.in_channels, conv.out_channels, (1, k, k), s, (0, p, p), (1, d, d), conv.groups, bias,
                        device="meta")
        weight = w.unsqueeze(2).clone()
    else:  # I3D inflation: repeat along depth, divide by depth so a constant-in-depth input gives the 2D response
        new = nn.Conv3d(conv.in_channels, conv.out_channels, k, s, p, d, conv.groups, bias, device="meta")
        weight = w.unsqueeze(2).repeat(1, 1, k, 1, 1) / k
    new.weight = nn.Parameter(weight)
    if bias:
        new.bias = nn.Parameter(conv.bias.detach().clone())  # type: ignore[union-attr]
    return new


def _convert_other(child: nn.Module, name: str) -> nn.Module | None:
    """3D twin of a 2D norm/pool layer (state copied), or None when ``child`` is not one."""
    if isinstance(child, nn.BatchNorm2d):
        bn = nn.BatchNorm3d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
        bn.load_state_dict(child.state_dict())
        return bn
    if isinstance(child, nn.MaxPool2d):
        return nn.MaxPool3d(_single(child.kernel_size, "kernel", name), _single(child.stride, "stride", name),
                            _single(child.padding, "padding", name), ceil_mode=child.ceil_mode)
    if isinstance(child, nn.AvgPool2d):
        return nn.AvgPool3d(_single(child.kernel_size, "kernel", name), _single(child.stride, "stride", name),
                            _single(child.padding, "padding", name), ceil_mode=child.ceil_mode,
                            count_include_pad=child.count_include_pad)
    if isinstance(child, nn.AdaptiveAvgPool2d):
        return nn.AdaptiveAvgPool3d(1)
    return None


def convert_to_3d(module: nn.Module, conv: str = "3d", prefix: str = "") -> nn.Module:
    """Replace, in place, every 2D conv/norm/pool layer of ``module`` by its 3D counterpart.

    ``conv``: ``3d`` (I3D-inflated full kernels), ``acs`` or ``2.5d``. Learned values carry over
    (norm statistics included). A 2D layer with no known 3D twin raises :class:`ConfigError`
    naming it, rather than leaving a network that fails on the first volume.
    """
    if conv not in CONVS:
        raise ConfigError(f"conv must be one of {', '.join(CONVS)}, got {conv!r}")
    for child_name, child in module.named_children():
        name = f"{prefix}{child_name}"
        if isinstance(child, nn.Conv2d):
            setattr(module, child_name, _convert_conv(child, conv, name))
            continue
        other = _convert_other(child, name)
        if other is not None:
            setattr(module, child_name, other)
        elif "2d" in type(child).__name__.lower() and not list(child.children()) and any(child.parameters()):
            raise ConfigError(f"cannot convert layer {name} ({type(child).__name__}) to 3D")
        else:
            convert_to_3d(child, conv, name + ".")
    return module


# ------------------------------------------------------------------------------ towers
def _timm_resnet(name: str, in_chans: int, weights: str | None) -> nn.Module:
    import timm

    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
    except RuntimeError as exc:  # unknown model name
        raise ConfigError(f"volume encoder: {exc}") from exc
    if not (hasattr(model, "conv1") and hasattr(model, "layer4")):
        raise ConfigError(f"volume encoders convert ResNet-style timm models (conv1 ... layer4); {name!r} is not one")
    if weights:
        from medvl.models.image_towers import load_timm_weights

        load_timm_weights(model, weights, in_chans)
    return model


def _reset_torch_init(model: nn.Module) -> None:
    for m in model.modules():
        if m is not model and callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()


class ResNet3dTower(nn.Module):
    """A timm 2D ResNet converted to 3D; ``forward(x[B, C, D, H, W]) -> [B, num_features]`` (global mean).

    ``stem="small"`` replaces the 7x7/2 conv + max-pool by a 3x3/1 conv before conversion (the
    ResNet of the MedMNIST code, built for 28 px); a weights file then leaves the stem random.
    """

    def __init__(self, name: str = "resnet18", conv: str = "3d", stem: str = "small", init: str = "torch",
                 in_chans: int = 1, weights: str | None = None):
        super().__init__()
        if stem not in STEMS:
            raise ConfigError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
        if init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        trunk = _timm_resnet(name, in_chans, weights)
        if stem == "small":
            trunk.conv1 = nn.Conv2d(in_chans, trunk.conv1.out_channels, 3, 1, 1, bias=False)
            trunk.maxpool = nn.Identity()
        if init == "torch" and not weights:
            _reset_torch_init(trunk)
        self.trunk = convert_to_3d(trunk, conv)
        self.conv, self.stem = conv, stem
        self.num_features = int(trunk.num_features)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ConfigError(f"3D encoder expects volumes [B, C, D, H, W], got shape {tuple(x.shape)}")
        return self.trunk.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x).mean(dim=(2, 3, 4))

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """Pooled features, the last stage's cells ``[B, d*h*w, C]`` and their ``(d, h, w)`` grid."""
        f = self._features(x)
        return f.mean(dim=(2, 3, 4)), f.flatten(2).transpose(1, 2), tuple(int(g) for g in f.shape[2:])


class SliceTower(nn.Module):
    """2.5D: a 2D timm tower on every depth slice; slice features pooled by ``pool`` (mean or max)."""

    def __init__(self, name: str = "resnet18", in_chans: int = 1, weights: str | None = None, image_size: int = 28,
                 pool: str = "mean"):
        super().__init__()
        from medvl.models.config import ImageTowerConfig
        from medvl.models.image_towers import TimmImageTower

        if pool not in POOLS:
            raise ConfigError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        cfg = ImageTowerConfig(type="timm", name=name, in_chans=in_chans, image_size=image_size,
                               pretrained_weights=weights)
        self.tower = TimmImageTower(cfg)
        self.pool = pool
        self.num_features = self.tower.num_features

    def _slices(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ConfigError(f"2.5D encoder expects volumes [B, C, D, H, W], got shape {tuple(x.shape)}")
        b, c, d, h, w = x.shape
        return x.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.tower(self._slices(x)).view(x.shape[0], x.shape[2], -1)
        return f.mean(1) if self.pool == "mean" else f.amax(1)

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """Pooled features and every slice's cells ``[B, D*h*w, C]`` on a ``(D, h, w)`` grid."""
        b, d = x.shape[0], x.shape[2]
        pooled, tokens, grid = self.tower.forward_tokens(self._slices(x))
        pooled = pooled.view(b, d, -1)
        pooled = pooled.mean(1) if self.pool == "mean" else pooled.amax(1)
        return pooled, tokens.reshape(b, d * tokens.shape[1], tokens.shape[2]), (d, *grid)


# ------------------------------------------------------------------------------ the Encoder
class VolumeEncoder(Encoder):
    """An image-only encoder over volumes; ``.tower`` is the trainable module (fine-tuning)."""

    spatial_dims = 3

    def __init__(self, tower: nn.Module, name: str, image_size: int, in_chans: int, weights: str | None,
                 model_name: str, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.tower = tower.to(self.device).eval()
        self.name = name
        self.image_size, self.in_chans = int(image_size), int(in_chans)
        self.embed_dim = int(tower.num_features)
        mean, std = (0.0,), (1.0,)  # the MedMNIST 3D code feeds [0, 1] volumes as they are
        if weights:
            import timm

            pcfg = timm.get_pretrained_cfg(model_name)
            m, s = (getattr(pcfg, "mean", None) or (0.5,)), (getattr(pcfg, "std", None) or (0.5,))
            mean, std = (sum(m) / len(m),), (sum(s) / len(s),)
        self.mean, self.std = mean * self.in_chans, std * self.in_chans

    def _encode_image_batch(self, images: torch.Tensor) -> torch.Tensor:
        return self.tower(images)

    def image_model(self) -> nn.Module:
        return self.tower


def parse_volume_spec(schema: str, rest: str, **kwargs: Any) -> dict[str, Any]:
    """``resnet18@w.safetensors?conv=acs&size=64`` + keyword options -> validated options dict."""
    body, _, query = rest.partition("?")
    name, _, weights = body.partition("@")
    if not name:
        raise ConfigError(f"{schema}: spec needs a timm ResNet name, e.g. {schema}:resnet18[@weights.safetensors]")
    opts: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else {}
    aliases = {"image_size": "size"}
    for key, value in kwargs.items():
        if value is not None:
            opts[aliases.get(key, key)] = value
    valid = {"conv", "stem", "init", "size", "in_chans"} | ({"pool"} if schema == "2.5d" else set())
    if schema == "2.5d":
        valid -= {"conv", "stem", "init"}
    unknown = sorted(set(opts) - valid)
    if unknown:
        raise ConfigError(f"{schema}:{rest}: unknown option(s) {unknown}; valid: {', '.join(sorted(valid))}")
    out: dict[str, Any] = {"name": name, "weights": weights or None}
    for key in ("size", "in_chans"):
        if key in opts:
            try:
                out[key] = int(opts[key])
            except (TypeError, ValueError):
                raise ConfigError(f"{schema}:{rest}: {key} must be an integer, got {opts[key]!r}") from None
            if out[key] < 1:
                raise ConfigError(f"{schema}:{rest}: {key} must be >= 1, got {out[key]}")
    for key in ("conv", "stem", "init", "pool"):
        if key in opts:
            out[key] = str(opts[key]).lower()
    if schema == "acs":
        if out.get("conv", "acs") != "acs":
            raise ConfigError(f"acs:{rest}: conv={out['conv']} contradicts the acs: schema")
        out["conv"] = "acs"
    return out


def _build(schema: str, rest: str, device: str = "cpu", **kwargs: Any) -> VolumeEncoder:
    o = parse_volume_spec(schema, rest, **kwargs)
    size, in_chans = o.get("size", 28), o.get("in_chans", 1)
    head = o["name"] + (f"@{o['weights']}" if o["weights"] else "")
    if schema == "2.5d":
        tower: nn.Module = SliceTower(o["name"], in_chans, o["weights"], size, o.get("pool", "mean"))
        canon = f"2.5d:{head}?pool={tower.pool}&size={size}"
    else:
        tower = ResNet3dTower(o["name"], o.get("conv", "3d"), o.get("stem", "small"), o.get("init", "torch"),
                              in_chans, o["weights"])
        canon = f"resnet3d:{head}?conv={tower.conv}&stem={tower.stem}&size={size}"
    return VolumeEncoder(tower, canon, size, in_chans, o["weights"], o["name"], device)


@register_encoder_schema("resnet3d")
def load_resnet3d(rest: str, device: str = "cpu", **kwargs: Any) -> VolumeEncoder:
    """``resnet3d:resnet18[@weights][?conv=3d|acs|2.5d&stem=small|imagenet&init=torch|timm&size=28]``."""
    return _build("resnet3d", rest, device, **kwargs)


@register_encoder_schema("acs")
def load_acs(rest: str, device: str = "cpu", **kwargs: Any) -> VolumeEncoder:
    """``acs:resnet18[@weights]`` = ``resnet3d:resnet18?conv=acs`` (2D weights used unchanged)."""
    return _build("acs", rest, device, **kwargs)


@register_encoder_schema("2.5d")
def load_slices(rest: str, device: str = "cpu", **kwargs: Any) -> VolumeEncoder:
    """``2.5d:resnet18[@weights][?pool=mean|max&size=28]``: a 2D tower per slice, pooled over depth."""
    return _build("2.5d", rest, device, **kwargs)


@register_encoder_schema("cine")
def load_cine(rest: str, device: str = "cpu", **kwargs: Any) -> VolumeEncoder:
    """``cine:resnet18[@weights][?pool=mean|max&size=64&in_chans=3]``: 2D+time, a 2D tower per frame pooled over time.

    Same tower as ``2.5d:`` with the frame axis in place of depth and colour input by default
    (ultrasound/echo clips ``[B, 3, T, H, W]``; datasets resample a clip's frames to ``size``).
    """
    if kwargs.get("in_chans") is None and "in_chans=" not in rest:
        kwargs["in_chans"] = 3
    enc = _build("2.5d", rest, device, **kwargs)
    enc.name = "cine:" + enc.name.split(":", 1)[1]
    return enc


VOLUME_SCHEMAS = ("resnet3d", "acs", "2.5d", "cine")
