"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023).

Contract: ``forward(outputs, batch) -> {"loss": scalar}``; needs ``image_features``,
``text_features`` (L2-normalised), ``logit_scale`` (exp'd) and ``logit_bias`` (a model built with
``init_logit_bias``, e.g. ``siglip-tiny``). Every image/text pair is an independent binary
problem: ``loss = -sum_ij log sigmoid(z_ij * (s * <i, t_j> + b)) / B`` with ``z = +1`` on the
diagonal and ``-1`` elsewhere. Under torch.distributed each rank scores its local images
against the gathered texts (gradients flow back to every shard), which sums to the same global
loss as open_clip's neighbour exchange.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvl.errors import ConfigError
from medvl.objectives.distributed import gather_with_grad, world_info
from medvl.objectives.infonce import contrastive_inputs


class SigLIPLoss(nn.Module):
    """Sigmoid loss with the model's learnable scale and bias."""

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
        img, txt, scale = contrastive_inputs(outputs, "siglip")
        bias = outputs.get("logit_bias")
        if bias is None:
            raise ConfigError("objective 'siglip' needs a model with a logit_bias "
                              "(set init_logit_bias, e.g. -10 as in the siglip-tiny preset)")
        bias = torch.as_tensor(bias, device=img.device).float()
        rank, _ = world_info()
        all_txt = gather_with_grad(txt)
        logits = scale * img @ all_txt.T + bias
        n = img.shape[0]
        signs = -torch.ones_like(logits)
        idx = torch.arange(n, device=logits.device)
        signs[idx, rank * n + idx] = 1.0
        loss = -F.logsigmoid(signs * logits).sum() / n
        return {"loss": loss}
