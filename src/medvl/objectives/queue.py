"""InfoNCE with a MoCo-style FIFO queue of past features as extra negatives.

Why: CPU and single-GPU runs use small batches, where InfoNCE sees few negatives. The queue
keeps the last ``size`` image and text features (detached, so excluded from the gradient) and
appends them to the candidates of each direction: image->[texts; queued texts] and
text->[images; queued images]. There is no momentum encoder, so queued features come from
slightly older weights; keep ``size`` a few batches long.

Contract: ``forward(outputs, batch) -> {"loss": scalar}`` (``batch`` unused). The current
batch is enqueued *after* the loss only when the module is in training mode and grad is
enabled, so validation batches never enter the queue. Under torch.distributed the gathered
global batch is enqueued, keeping every rank's queue identical. The queue is saved in the
module's ``state_dict`` (for exact resume).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvl.errors import ConfigError
from medvl.objectives.distributed import gather_features
from medvl.objectives.infonce import contrastive_inputs

_BUFFERS = ("image_queue", "text_queue")


class QueueLoss(nn.Module):
    """Symmetric InfoNCE whose negatives include a FIFO memory of ``size`` past pairs."""

    def __init__(self, size: int = 1024, dim: int | None = None):
        super().__init__()
        if int(size) < 1:
            raise ConfigError(f"queue size must be >= 1, got {size}")
        self.size = int(size)
        d = int(dim) if dim else 0
        self.register_buffer("image_queue", torch.zeros(self.size if d else 0, d))
        self.register_buffer("text_queue", torch.zeros(self.size if d else 0, d))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def _allocate(self, dim: int, like: torch.Tensor) -> None:
        if self.image_queue.shape != (self.size, dim):
            if int(self.count):
                raise ConfigError(f"queue holds {self.image_queue.shape[1]}-d features, got {dim}-d")
            # float32 whatever the autocast dtype of the features, so old entries keep precision
            self.image_queue = like.new_zeros(self.size, dim, dtype=torch.float32)
            self.text_queue = like.new_zeros(self.size, dim, dtype=torch.float32)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A lazily sized queue must take the saved shape before the copy.
        for name in _BUFFERS:
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.zeros_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def queued(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The queued (image, text) features, oldest first."""
        n, p = int(self.count), int(self.ptr)
        if n < self.size:
            return self.image_queue[:n], self.text_queue[:n]
        order = torch.cat([torch.arange(p, self.size), torch.arange(0, p)]).to(self.image_queue.device)
        return self.image_queue[order], self.text_queue[order]

    @torch.no_grad()
    def enqueue(self, image_features: torch.Tensor, text_features: torch.Tensor) -> None:
        """Append a batch (detached), overwriting the oldest entries once full."""
        self._allocate(image_features.shape[1], image_features)
        img = image_features.detach()[-self.size:].to(self.image_queue.dtype)
        txt = text_features.detach()[-self.size:].to(self.text_queue.dtype)
        n = img.shape[0]
        idx = (int(self.ptr) + torch.arange(n, device=img.device)) % self.size
        self.image_queue[idx] = img
        self.text_queue[idx] = txt
        self.ptr.fill_((int(self.ptr) + n) % self.size)
        self.count.fill_(min(int(self.count) + n, self.size))

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
        img, txt, scale = contrastive_inputs(outputs, "queue")
        img, txt = gather_features(img, txt)
        self._allocate(img.shape[1], img)
        q_img, q_txt = self.queued()
        q_img, q_txt = q_img.to(img.dtype), q_txt.to(txt.dtype)
        labels = torch.arange(img.shape[0], device=img.device)
        logits_i2t = scale * img @ torch.cat([txt, q_txt]).T
        logits_t2i = scale * txt @ torch.cat([img, q_img]).T
        loss = (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels)) / 2
        if self.training and torch.is_grad_enabled():
            self.enqueue(img, txt)
        return {"loss": loss}
