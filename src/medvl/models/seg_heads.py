"""Dense (segmentation) heads on any encoder that gives a feature map or a patch grid.

Why one module for 2D and 3D: the medvl towers already give local features (a timm CNN's
stages, a ViT's patch grid, the 3D ResNet's stages); a segmentation model is such a *feature
backbone* plus a light head, whatever the dimensionality. Two heads:

* :class:`LinearHead` -- the DINOv2 linear probe: normalisation + a 1x1 convolution on the last
  feature map (or the concatenated last ViT blocks), logits upsampled to the input size. It
  measures how linearly decodable the frozen features are.
* :class:`FPNHead` -- a light UNet/FPN decoder: a lateral 1x1 projection of every stage, then from
  the coarsest level up: upsample, concatenate the next finer stage (the skip), 3x3 conv + norm +
  ReLU; a last 1x1 conv gives logits at the finest stage's resolution, upsampled to the input.
  On ViTs (all blocks at one stride) it still fuses several blocks.

Backbones (:class:`TowerFeatures`) wrap a medvl image tower (``TimmImageTower`` of a CLIP
checkpoint or a ``timm:`` spec, ``ResNet3dTower``) and return the list of stage maps, finest
first, ``channels`` per stage. The config dict of :class:`SegModel` rebuilds everything from the
tower config, so a segmentation checkpoint needs neither the original CLIP checkpoint nor the
timm weights file.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvl.errors import ConfigError

HEADS = ("linear", "fpn")
PROMPTS = ("none", "box", "text")
FREEZE = ("frozen", "finetune", "last")
VIT_BLOCKS = 4  # ViT: the number of last blocks fed to the heads (DINOv2's linear probe uses the last 4)


def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv3d if dims == 3 else nn.Conv2d


def _norm(dims: int, ch: int) -> nn.Module:
    """GroupNorm: segmentation batches are small (3D ones tiny), where BatchNorm statistics are noise.

    Up to 8 groups of at least 4 channels, so a group has several values even on a 1x1 map (the
    last stage of a CNN at 32 px).
    """
    groups = math.gcd(ch, 8)
    while groups > 1 and ch // groups < 4:
        groups //= 2
    return nn.GroupNorm(groups, ch)


def _resize(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "trilinear" if x.ndim == 5 else "bilinear"
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


class TowerFeatures(nn.Module):
    """Multi-scale feature maps of a medvl image tower, finest first.

    timm CNNs: every stage of ``forward_intermediates``; timm ViTs: the last ``VIT_BLOCKS`` blocks
    as ``[B, C, h, w]`` patch grids; ``ResNet3dTower``: the stem and every stage.
    """

    def __init__(self, tower: nn.Module, tower_type: str):
        super().__init__()
        self.tower = tower
        self.tower_type = tower_type
        self.dims = 3 if tower_type == "resnet3d" else 2
        if tower_type == "resnet3d":
            stem_ch = tower.stem[0].out_channels
            self.channels = [stem_ch] + [stage[-1].conv2.out_channels for stage in tower.stages]
            self.indices: int | list[int] | None = None
        else:
            trunk = tower.trunk
            if not hasattr(trunk, "forward_intermediates"):
                raise ConfigError(f"timm model {type(trunk).__name__} has no forward_intermediates; "
                                  "segmentation heads need its stage features")
            info = list(trunk.feature_info)
            if hasattr(trunk, "patch_embed"):  # ViT: one stride, take the last blocks
                n = min(VIT_BLOCKS, len(info))
                self.indices = list(range(len(info) - n, len(info)))
            else:
                self.indices = None
            chosen = info if self.indices is None else [info[i] for i in self.indices]
            self.channels = [int(f["num_chs"]) for f in chosen]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.tower_type == "resnet3d":
            if x.ndim != 5:
                raise ConfigError(f"a 3D segmentation model expects volumes [B, C, D, H, W], got {tuple(x.shape)}")
            feats = [self.tower.stem(x)]
            for stage in self.tower.stages:
                feats.append(stage(feats[-1]))
            return feats
        x = self.tower._fit(x)
        kwargs: dict[str, Any] = {"intermediates_only": True}
        if self.indices is not None:
            kwargs["indices"] = self.indices
        return list(self.tower.trunk.forward_intermediates(x, **kwargs))

    def lock(self, freeze: str, unlocked_layers: int = 1) -> None:
        """``frozen``: no gradients; ``finetune``: all trainable; ``last``: only the last N groups."""
        for p in self.tower.parameters():
            p.requires_grad = freeze == "finetune"
        if freeze != "last":
            return
        if self.tower_type == "resnet3d":
            self.tower.lock(unlocked_layers)
            return
        # timm: the modules of the last N feature stages (CNN stages / ViT blocks) train, nothing else.
        # (timm's coarse group_matcher often ends with the removed classifier, unlocking nothing.)
        modules = [str(f["module"]) for f in self.tower.trunk.feature_info][-unlocked_layers:]
        for name, p in self.tower.trunk.named_parameters():
            if any(name == m or name.startswith(m + ".") for m in modules):
                p.requires_grad = True


class HFPatchFeatures(nn.Module):
    """Patch-token grids of the last ``VIT_BLOCKS`` layers of a transformers ViT / DINOv2 (``hf:`` encoders).

    Built from the model's config dict (``AutoModel.from_config``), so a segmentation checkpoint holds
    the weights and needs not the original folder. Inputs are padded to a multiple of the patch size;
    ViTs get ``interpolate_pos_encoding`` (DINOv2 interpolates by itself), so any input size works.
    """

    dims = 2
    tower_type = "hf"

    def __init__(self, tower: dict[str, Any]):
        super().__init__()
        import inspect

        from transformers import AutoConfig, AutoModel

        from medvl.models.text_towers import quiet_transformers

        hf = dict(tower["hf_config"])
        model_type = hf.pop("model_type", None)
        if not model_type:
            raise ConfigError("segmentation tower type hf: the stored hf_config has no model_type")
        with quiet_transformers():
            self.model = AutoModel.from_config(AutoConfig.for_model(model_type, **hf))
        cfg = self.model.config
        if not hasattr(cfg, "patch_size") or not hasattr(cfg, "hidden_size"):
            raise ConfigError(f"hf model {model_type!r} has no patch grid (patch_size/hidden_size); segmentation "
                              "heads on hf: encoders need a ViT-like model (ViT, DINOv2, RAD-DINO)")
        self.patch = int(cfg.patch_size)
        self.skip = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)  # CLS (+ DINOv2 registers)
        n = min(VIT_BLOCKS, int(cfg.num_hidden_layers))
        self.n = n
        self.channels = [int(cfg.hidden_size)] * n
        self.indices: list[int] | None = list(range(n))
        self._interp = "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2:]
        ph, pw = -(-h // self.patch), -(-w // self.patch)
        if (ph * self.patch, pw * self.patch) != (h, w):
            x = F.pad(x, (0, pw * self.patch - w, 0, ph * self.patch - h))
        kw = {"interpolate_pos_encoding": True} if self._interp else {}
        out = self.model(pixel_values=x, output_hidden_states=True, **kw)
        b = x.shape[0]
        return [hs[:, self.skip:].transpose(1, 2).reshape(b, hs.shape[-1], ph, pw)
                for hs in out.hidden_states[-self.n:]]

    def lock(self, freeze: str, unlocked_layers: int = 1) -> None:
        for p in self.model.parameters():
            p.requires_grad = freeze == "finetune"
        if freeze == "last":
            for layer in list(self.model.encoder.layer)[-unlocked_layers:]:
                for p in layer.parameters():
                    p.requires_grad = True


class LinearHead(nn.Module):
    """DINOv2 linear probe: norm + 1x1 conv on the concatenation of the maps at the coarsest grid."""

    def __init__(self, channels: list[int], num_classes: int, dims: int, vit: bool):
        super().__init__()
        # CNNs: the last stage only; ViTs: the last blocks concatenated (all on one grid).
        self.use = list(range(len(channels))) if vit else [len(channels) - 1]
        cin = sum(channels[i] for i in self.use)
        self.norm = _norm(dims, cin)
        self.proj = _conv(dims)(cin, num_classes, 1)

    def forward(self, feats: list[torch.Tensor], size: tuple[int, ...]) -> torch.Tensor:
        x = torch.cat([feats[i] for i in self.use], dim=1)
        return _resize(self.proj(self.norm(x)), size)


class _ConvBlock(nn.Sequential):
    def __init__(self, dims: int, cin: int, cout: int):
        super().__init__(_conv(dims)(cin, cout, 3, padding=1, bias=False), _norm(dims, cout), nn.ReLU(inplace=True))


class FPNHead(nn.Module):
    """Light UNet/FPN decoder with skips from every stage (see module doc)."""

    def __init__(self, channels: list[int], num_classes: int, dims: int, width: int = 64,
                 cond_dim: int = 0, prompt_channels: int = 0):
        super().__init__()
        conv = _conv(dims)
        self.lateral = nn.ModuleList([conv(c, width, 1) for c in channels])
        # Box prompt (MedSAM's interaction as a dense input): the box map, resized to every level, is
        # projected and added to that level's skip features, so the decoder knows where to look.
        self.prompt_proj = nn.ModuleList([conv(prompt_channels, width, 1) for _ in channels]) \
            if prompt_channels else None
        self.fuse = nn.ModuleList([_ConvBlock(dims, 2 * width, width) for _ in channels[:-1]])
        self.top = _ConvBlock(dims, width, width)
        self.out = conv(width, num_classes, 1)
        # FiLM (text/prompt conditioning): scale and shift of the coarsest decoder features.
        self.film = nn.Linear(cond_dim, 2 * width) if cond_dim else None

    def _skip(self, i: int, feat: torch.Tensor, prompt_map: torch.Tensor | None) -> torch.Tensor:
        x = self.lateral[i](feat)
        if self.prompt_proj is not None:
            if prompt_map is None:
                raise ConfigError("this segmentation head is box-prompted; pass the box map")
            x = x + self.prompt_proj[i](_resize(prompt_map, tuple(x.shape[2:])))
        return x

    def forward(self, feats: list[torch.Tensor], size: tuple[int, ...],
                cond: torch.Tensor | None = None, prompt_map: torch.Tensor | None = None) -> torch.Tensor:
        x = self.top(self._skip(len(feats) - 1, feats[-1], prompt_map))
        if self.film is not None:
            if cond is None:
                raise ConfigError("this segmentation head is prompt-conditioned; pass the prompt embedding")
            gamma, beta = self.film(cond).chunk(2, dim=-1)
            view = (cond.shape[0], -1) + (1,) * (x.ndim - 2)
            x = x * (1 + gamma.view(view)) + beta.view(view)
        for i in range(len(feats) - 2, -1, -1):
            skip = self._skip(i, feats[i], prompt_map)
            x = self.fuse[i](torch.cat([_resize(x, tuple(skip.shape[2:])), skip], dim=1))
        return _resize(self.out(x), size)


class SegModel(nn.Module):
    """Feature backbone + dense head: ``[B, C, *S]`` images in [0, 1] -> logits ``[B, K', *S]``.

    ``K' = K + 1`` (background first) for ``task: multiclass`` (label maps, softmax), ``K`` for
    ``task: multilabel`` (one sigmoid per finding, masks may overlap). ``config`` (a plain dict)
    rebuilds the model with :func:`build_seg_model`.
    """

    def __init__(self, config: dict[str, Any], load_pretrained: bool = True):
        super().__init__()
        from medvl.config import from_dict
        from medvl.models.config import ImageTowerConfig
        from medvl.models.image_towers import build_image_tower

        self.cfg = dict(config)
        head, task = config["head"], config["task"]
        if head not in HEADS:
            raise ConfigError(f"model.head: unknown head {head!r}; valid: {', '.join(HEADS)}")
        if task not in ("multilabel", "multiclass"):
            raise ConfigError(f"segmentation task must be multilabel or multiclass, got {task!r}")
        if config["freeze"] not in FREEZE:
            raise ConfigError(f"model.freeze: {config['freeze']!r}; valid: {', '.join(FREEZE)}")
        self.backbone: TowerFeatures | HFPatchFeatures
        if config["tower"].get("type") == "hf":
            self.backbone = HFPatchFeatures(config["tower"])
            self.in_chans = int(config["tower"].get("in_chans", 3))
        else:
            tower_cfg = from_dict(ImageTowerConfig, dict(config["tower"]))
            tower = build_image_tower(tower_cfg, load_pretrained=load_pretrained)
            self.backbone = TowerFeatures(tower, tower_cfg.type)
            self.in_chans = tower_cfg.in_chans
        self.dims = self.backbone.dims
        self.classes = list(config["classes"])
        self.prompt = str(config.get("prompt", "none"))
        if self.prompt not in PROMPTS:
            raise ConfigError(f"model.prompt: {self.prompt!r}; valid: {', '.join(PROMPTS)}")
        # A prompted model answers one question per forward pass ("this box" / "this phrase"): one sigmoid.
        self.num_outputs = 1 if self.prompt != "none" else len(self.classes) + (1 if task == "multiclass" else 0)
        vit = self.backbone.indices is not None
        self.text_model: nn.Module | None = None
        cond_dim = 0
        if self.prompt == "text":
            self.text_model = _text_model(config)
            cond_dim = int(self.text_model.cfg.embed_dim)
        if head == "linear":
            if self.prompt != "none":
                raise ConfigError("prompted segmentation needs model.head: fpn (the linear probe takes no prompt)")
            self.head: nn.Module = LinearHead(self.backbone.channels, self.num_outputs, self.dims, vit)
        else:
            self.head = FPNHead(self.backbone.channels, self.num_outputs, self.dims, int(config.get("width", 64)),
                                cond_dim=cond_dim, prompt_channels=1 if self.prompt == "box" else 0)
        mean, std = config.get("mean"), config.get("std")
        view = (1, -1) + (1,) * self.dims
        self.register_buffer("pixel_mean", None if mean is None else torch.tensor(mean).view(view), persistent=False)
        self.register_buffer("pixel_std", None if std is None else torch.tensor(std).view(view), persistent=False)
        self.backbone.lock(config["freeze"], int(config.get("unlocked_layers", 1)))

    @property
    def task(self) -> str:
        return str(self.cfg["task"])

    @property
    def encoder_frozen(self) -> bool:
        return self.cfg["freeze"] == "frozen"

    def train(self, mode: bool = True) -> SegModel:
        """A frozen backbone (and the text tower) stay in eval mode (normalisation statistics stay pretrained)."""
        super().train(mode)
        if mode and self.encoder_frozen:
            self.backbone.eval()
        if self.text_model is not None:
            self.text_model.eval()
        return self

    @torch.no_grad()
    def embed_text(self, phrases: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``[B, E]`` of the frozen text tower (text-prompted models)."""
        if self.text_model is None:
            raise ConfigError("this segmentation model takes no text prompt (model.prompt is not 'text')")
        tok = self.text_model.tokenizer(list(phrases))
        dev = self.pixel_mean.device if self.pixel_mean is not None else next(self.parameters()).device
        emb = self.text_model.encode_text(tok["input_ids"].to(dev), tok["attention_mask"].to(dev))
        return F.normalize(emb.float(), dim=-1)

    def forward(self, images: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
        """``prompt``: the box map ``[B, 1, *S]`` (box models) or text embeddings ``[B, E]`` (text models)."""
        x = images
        if x.shape[1] != self.in_chans:  # the Encoder convention: grey -> RGB by repetition, RGB -> grey by mean
            if x.shape[1] == 1:
                x = x.expand(-1, self.in_chans, *x.shape[2:])
            elif self.in_chans == 1:
                x = x.mean(1, keepdim=True)
            else:
                raise ConfigError(f"images have {images.shape[1]} channels but the model expects {self.in_chans}")
        if self.pixel_mean is not None:
            x = x - self.pixel_mean.to(x.dtype)
        if self.pixel_std is not None:
            x = x / self.pixel_std.to(x.dtype)
        if self.encoder_frozen:
            with torch.no_grad():
                feats = self.backbone(x)
        else:
            feats = self.backbone(x)
        if self.prompt == "box":
            return self.head(feats, tuple(images.shape[2:]), prompt_map=prompt)
        if self.prompt == "text":
            return self.head(feats, tuple(images.shape[2:]), cond=prompt)
        return self.head(feats, tuple(images.shape[2:]))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities ``[B, K, *S]`` (background dropped for multiclass)."""
        if self.task == "multiclass":
            return logits.softmax(1)[:, 1:]
        return logits.sigmoid()

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def _text_model(config: dict[str, Any]) -> nn.Module:
    """The frozen text half of a medvl CLIP model (its image tower dropped: the backbone holds that)."""
    from medvl.config import from_dict
    from medvl.models.clip import CLIPModel
    from medvl.models.config import ModelConfig

    if not config.get("text_model"):
        raise ConfigError("a text-prompted segmentation model needs model.encoder to be a medvl CLIP checkpoint "
                          "with a trained tokenizer (its text tower embeds the prompts)")
    clip = CLIPModel(from_dict(ModelConfig, dict(config["text_model"])), load_pretrained=False)
    clip.visual = nn.Identity()
    clip.image_projection = nn.Identity()
    for p in clip.parameters():
        p.requires_grad = False
    return clip.eval()


def tower_config_from_encoder(spec: str, in_chans: int | None = None,
                              image_size: int | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """The image-tower config (and weights, if pretrained) behind an encoder spec.

    ``spec``: a medvl CLIP checkpoint directory, a preset name (``clip-tiny``, ``clip3d-tiny``:
    random init, the from-scratch baseline) or ``timm:<name>[@weights.safetensors]``. Returns
    ``(tower config dict with mean/std, tower state dict or None)``.
    """
    from pathlib import Path

    from medvl.config import to_dict

    if Path(spec).is_dir():
        from medvl.models.serialization import load_model

        model = load_model(spec)
        cfg = to_dict(model.cfg.image)
        cfg["pretrained_weights"] = None
        return cfg, {k: v.clone() for k, v in model.visual.state_dict().items()}
    if spec.startswith("timm:"):
        name, _, weights = spec[len("timm:"):].partition("@")
        if not name:
            raise ConfigError("timm encoder spec needs a model name: timm:<name>[@weights.safetensors]")
        cfg = {"type": "timm", "name": name, "in_chans": in_chans or 3, "image_size": image_size or 224,
               "pretrained_weights": weights or None, "mean": None, "std": None, "kwargs": {}}
        if weights:
            from medvl.config import from_dict
            from medvl.models.config import ImageTowerConfig
            from medvl.models.image_towers import build_image_tower

            tower = build_image_tower(from_dict(ImageTowerConfig, cfg))
            cfg["pretrained_weights"] = None
            return cfg, tower.state_dict()
        return cfg, None
    if spec.startswith("hf:"):
        from medvl.models.encoder import load_encoder

        enc = load_encoder(spec)
        model = getattr(enc, "model", None)
        if model is None or hasattr(model, "get_text_features"):
            raise ConfigError(f"segmentation encoder {spec!r}: only image-only hf: models (ViT, DINOv2) are "
                              "supported as dense backbones")
        hf_cfg = model.config.to_dict()
        cfg = {"type": "hf", "hf_config": hf_cfg, "in_chans": int(enc.in_chans),
               "image_size": int(image_size or enc.image_size),
               "mean": list(getattr(enc, "native_mean", ())) or None,
               "std": list(getattr(enc, "native_std", ())) or None}
        return cfg, {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    if spec.startswith("openclip:"):
        raise ConfigError(f"segmentation encoder {spec!r}: openclip: backbones are not supported yet; use a "
                          "medvl checkpoint, a preset name (clip-tiny, clip3d-tiny), timm:<name> or hf:<ViT/DINOv2>")
    from medvl.models.registry import create_model

    try:
        model = create_model(spec)
    except Exception as exc:
        raise ConfigError(f"segmentation encoder {spec!r} is neither a medvl checkpoint directory, a preset name "
                          f"nor timm:<name> ({exc})") from exc
    cfg = to_dict(model.cfg.image)
    if in_chans is not None:
        cfg["in_chans"] = in_chans
    if image_size is not None:
        cfg["image_size"] = image_size
    return cfg, None


def build_seg_model(encoder: str, classes: list[str], task: str, head: str = "fpn", freeze: str = "finetune",
                    unlocked_layers: int = 1, width: int = 64, in_chans: int | None = None,
                    image_size: int | None = None, prompt: str = "none") -> SegModel:
    """A :class:`SegModel` on the tower of ``encoder`` (see :func:`tower_config_from_encoder`)."""
    tower_cfg, state = tower_config_from_encoder(encoder, in_chans, image_size)
    mean, std = tower_cfg.pop("mean", None), tower_cfg.pop("std", None)
    n = int(tower_cfg.get("in_chans", 1))
    if mean is not None and len(mean) == 1:
        mean = mean * n
    if std is not None and len(std) == 1:
        std = std * n
    config = {"encoder": str(encoder), "tower": {**tower_cfg, "mean": None, "std": None}, "mean": mean, "std": std,
              "classes": list(classes), "task": task, "head": head, "freeze": freeze,
              "unlocked_layers": int(unlocked_layers), "width": int(width), "prompt": prompt}
    text_state = None
    if prompt == "text":
        from pathlib import Path

        from medvl.models.serialization import load_model

        if not Path(encoder).is_dir():
            raise ConfigError(f"model.prompt=text needs model.encoder to be a medvl CLIP checkpoint, got {encoder!r}")
        clip = load_model(encoder)
        if not clip.tokenizer.trained:
            raise ConfigError(f"model.prompt=text: {encoder} has no trained tokenizer")
        config["text_model"] = clip.config
        text_state = {k: v for k, v in clip.state_dict().items()
                      if not k.startswith(("visual.", "image_projection."))}
    model = SegModel(config, load_pretrained=False)
    if state is not None:
        target = model.backbone if isinstance(model.backbone, HFPatchFeatures) else model.backbone.tower
        target.load_state_dict(state)
    if text_state is not None and model.text_model is not None:
        model.text_model.load_state_dict(text_state)
    return model
