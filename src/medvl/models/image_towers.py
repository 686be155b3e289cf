"""Image towers: any timm 2D backbone, and a small 3D ResNet for volumes.

Every tower maps images to pooled features ``[B, num_features]`` and supports
``set_grad_checkpointing`` and ``lock(unlocked_layers)`` so :class:`~medvl.models.clip.CLIPModel`
treats 2D and 3D towers alike. Nothing is downloaded: timm weights come only from a local
``pretrained_weights`` safetensors file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvl.errors import CheckpointError, ConfigError
from medvl.models.config import ImageTowerConfig

log = logging.getLogger(__name__)


def _classifier_keys(model: nn.Module) -> tuple[str, ...]:
    clf = getattr(model, "pretrained_cfg", {}).get("classifier") or "fc"
    return tuple([clf] if isinstance(clf, str) else clf)


def load_timm_weights(model: nn.Module, path: str | Path, in_chans: int) -> None:
    """Load a local safetensors state dict into a timm model, offline.

    Why not ``timm.create_model(pretrained=True)``: that reaches the Hub. Classifier keys are
    dropped (towers have ``num_classes=0``) and a 3-channel stem is adapted to ``in_chans`` the
    way timm does for its own pretrained weights (summing/repeating the first conv).
    """
    from safetensors.torch import load_file
    from timm.models import adapt_input_conv

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"image.pretrained_weights not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"cannot read image.pretrained_weights {path}: {exc}") from exc
    heads = _classifier_keys(model)
    state = {k: v for k, v in state.items() if not any(k == h or k.startswith(h + ".") for h in heads)}
    own = model.state_dict()
    first_conv = getattr(model, "pretrained_cfg", {}).get("first_conv")
    if first_conv and f"{first_conv}.weight" in state:
        key = f"{first_conv}.weight"
        if state[key].shape[1] != in_chans and key in own:
            state[key] = adapt_input_conv(in_chans, state[key])
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise CheckpointError(
            f"{path}: shape mismatch for {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} "
            f"(e.g. {bad[0]}: file {tuple(state[bad[0]].shape)} vs model {tuple(own[bad[0]].shape)})"
        )
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise CheckpointError(f"{path}: missing keys for this architecture: {', '.join(result.missing_keys[:5])}")
    if result.unexpected_keys:
        log.warning("%s: ignored %d unexpected keys (%s ...)", path, len(result.unexpected_keys),
                    result.unexpected_keys[0])


class TimmImageTower(nn.Module):
    """A timm backbone with its classifier removed, returning pooled features.

    ViT-like models get ``img_size``/``patch_size`` and dynamic size + padding so any input size
    works; CNNs smaller than their total stride (e.g. ConvNeXt at 28 px) are upsampled to that
    stride, because their unpadded downsampling convs would otherwise fail.
    """

    def __init__(self, cfg: ImageTowerConfig, load_pretrained: bool = True):
        super().__init__()
        import timm

        kwargs: dict[str, Any] = dict(pretrained=False, num_classes=0, in_chans=cfg.in_chans)
        kwargs.update(cfg.kwargs)
        vit_kwargs = dict(img_size=cfg.image_size, dynamic_img_size=True, dynamic_img_pad=True)
        if cfg.patch_size:
            vit_kwargs["patch_size"] = cfg.patch_size
        try:
            self.trunk = timm.create_model(cfg.name, **kwargs, **vit_kwargs)
        except TypeError:
            if cfg.patch_size:
                raise ConfigError(
                    f"image.patch_size is only valid for ViT-like timm models, not {cfg.name!r}") from None
            try:
                self.trunk = timm.create_model(cfg.name, **kwargs)
            except TypeError as exc:
                raise ConfigError(f"invalid image.kwargs for timm model {cfg.name!r}: {exc}") from exc
        except RuntimeError as exc:  # timm: unknown model name
            raise ConfigError(f"image.name: {exc}") from exc
        self.num_features = int(self.trunk.num_features)
        info = getattr(self.trunk, "feature_info", None)
        self.min_size = int(info[-1]["reduction"]) if info else 1
        if cfg.pretrained_weights and load_pretrained:
            load_timm_weights(self.trunk, cfg.pretrained_weights, cfg.in_chans)

    def _fit(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h < self.min_size or w < self.min_size:
            x = F.interpolate(x, size=(max(h, self.min_size), max(w, self.min_size)), mode="bilinear",
                              align_corners=False)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(self._fit(x))

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """Pooled features, the local features ``[B, P, C]`` they are pooled from, and their grid.

        CNNs: the last feature map (``P = h * w`` cells, row-major); ViTs: the patch tokens
        without the class/register tokens. Local alignment and grounding read these; the pooled
        output equals :meth:`forward`.
        """
        x = self._fit(x)
        feats = self.trunk.forward_features(x)
        pooled = self.trunk.forward_head(feats)
        if feats.ndim == 4:  # NCHW feature map
            grid = (int(feats.shape[2]), int(feats.shape[3]))
            tokens = feats.flatten(2).transpose(1, 2)
        elif feats.ndim == 3 and hasattr(self.trunk, "patch_embed"):  # ViT: [B, prefix + P, C]
            prefix = int(getattr(self.trunk, "num_prefix_tokens", 0))
            tokens = feats[:, prefix:]
            embed = self.trunk.patch_embed
            grid = tuple(int(g) for g in (embed.dynamic_feat_size(tuple(x.shape[-2:]))
                                          if hasattr(embed, "dynamic_feat_size") else embed.grid_size))
            if grid[0] * grid[1] != tokens.shape[1]:
                raise ConfigError(f"cannot map {tokens.shape[1]} tokens of {type(self.trunk).__name__} to a "
                                  f"{grid[0]}x{grid[1]} patch grid")
        else:
            raise ConfigError(f"timm model {type(self.trunk).__name__} gives features of shape "
                              f"{tuple(feats.shape)}; local features need an NCHW map or ViT patch tokens")
        return pooled, tokens, grid

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if not hasattr(self.trunk, "set_grad_checkpointing"):
            raise ConfigError(f"timm model {type(self.trunk).__name__} does not support gradient checkpointing")
        self.trunk.set_grad_checkpointing(enable)

    def lock(self, unlocked_layers: int = 0) -> None:
        """Freeze the trunk except its last ``unlocked_layers`` coarse groups (timm's group_matcher)."""
        from timm.models import group_parameters

        if not unlocked_layers:
            for p in self.trunk.parameters():
                p.requires_grad = False
            return
        groups = group_parameters(self.trunk, self.trunk.group_matcher(coarse=True))
        last = max(groups) - unlocked_layers
        for gid, names in groups.items():
            if gid <= last:
                for name in names:
                    self.trunk.get_parameter(name).requires_grad = False


def _norm3d(ch: int) -> nn.Module:
    # GroupNorm: volume batches are tiny (1-4), where BatchNorm statistics are noise.
    return nn.GroupNorm(min(8, ch), ch)


class BasicBlock3d(nn.Module):
    """Two 3x3x3 convs with a residual connection (ResNet "basic" block in 3D)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = _norm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = _norm3d(cout)
        self.act = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), _norm3d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + identity)


class ResNet3dTower(nn.Module):
    """Small 3D ResNet for volumes ``[B, C, D, H, W]`` -> ``[B, widths[-1]]`` (global average pool).

    Written with plain torch because timm is 2D-only; ``kwargs``: ``widths`` (channels per stage,
    default [16, 32, 64, 128]) and ``blocks`` (blocks per stage, default [1, 1, 1, 1]).
    """

    def __init__(self, cfg: ImageTowerConfig, load_pretrained: bool = True):
        super().__init__()
        valid = {"widths", "blocks"}
        unknown = set(cfg.kwargs) - valid
        if unknown:
            raise ConfigError(f"unknown image.kwargs {sorted(unknown)} for resnet3d; valid keys: "
                              f"{', '.join(sorted(valid))}")
        widths = list(cfg.kwargs.get("widths", [16, 32, 64, 128]))
        blocks = list(cfg.kwargs.get("blocks", [1] * len(widths)))
        if len(blocks) != len(widths):
            raise ConfigError("image.kwargs.blocks must have one entry per image.kwargs.widths stage")
        self.stem = nn.Sequential(nn.Conv3d(cfg.in_chans, widths[0], 3, 2, 1, bias=False),
                                  _norm3d(widths[0]), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            layers = [BasicBlock3d(cin if j == 0 else w, w, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            stages.append(nn.Sequential(*layers))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.num_features = widths[-1]
        self.grad_checkpointing = False
        if cfg.pretrained_weights and load_pretrained:
            from safetensors.torch import load_file

            try:
                self.load_state_dict(load_file(cfg.pretrained_weights))
            except Exception as exc:
                raise CheckpointError(f"cannot load image.pretrained_weights {cfg.pretrained_weights}: "
                                      f"{exc}") from exc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ConfigError(f"resnet3d expects volumes [B, C, D, H, W], got shape {tuple(x.shape)}")
        x = self.stem(x)
        for stage in self.stages:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return x.mean(dim=(2, 3, 4))

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """Pooled features, the last stage's cells ``[B, D*H*W, C]`` and their ``(d, h, w)`` grid."""
        if x.ndim != 5:
            raise ConfigError(f"resnet3d expects volumes [B, C, D, H, W], got shape {tuple(x.shape)}")
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        grid = tuple(int(g) for g in x.shape[2:])
        return x.mean(dim=(2, 3, 4)), x.flatten(2).transpose(1, 2), grid

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def lock(self, unlocked_layers: int = 0) -> None:
        """Freeze stem and all stages but the last ``unlocked_layers``."""
        for p in self.parameters():
            p.requires_grad = False
        if unlocked_layers:
            for stage in list(self.stages)[-unlocked_layers:]:
                for p in stage.parameters():
                    p.requires_grad = True


IMAGE_TOWERS: dict[str, type[nn.Module]] = {"timm": TimmImageTower, "resnet3d": ResNet3dTower}


def build_image_tower(cfg: ImageTowerConfig, load_pretrained: bool = True) -> nn.Module:
    """Build the tower named by ``cfg.type`` (one registration line per new tower family)."""
    if cfg.type not in IMAGE_TOWERS:
        raise ConfigError(f"unknown image.type {cfg.type!r}; valid: {', '.join(sorted(IMAGE_TOWERS))}")
    return IMAGE_TOWERS[cfg.type](cfg, load_pretrained=load_pretrained)
