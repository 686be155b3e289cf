"""Image-text contrastive learning with momentum distillation (ALBEF, Li et al. 2021; the
momentum self-distillation of MedVLP work for limited compute).

Why: report pairs are noisy — a batch holds reports that fit an image about as well as its own
(near-duplicate normal studies), and one-hot InfoNCE targets punish the model for seeing that.
An exponential-moving-average (EMA) copy of the model, the *teacher*, supplies soft targets
that spread probability over such plausible matches, and a queue of teacher features gives
many more candidates than a CPU-sized batch.

Per step (image->text; text->image is symmetric), with ``s`` the student's logit scale:

1. teacher <- ``momentum * teacher + (1 - momentum) * student`` (parameters; buffers copied);
2. candidates = teacher text features of the batch followed by the queue;
3. targets = ``alpha * softmax(s * teacher_image @ candidates^T) + (1 - alpha) * one_hot``;
4. loss = soft cross-entropy of ``s * student_image @ candidates^T`` against the targets;
5. the batch's teacher features enter the FIFO queue.

With ``alpha = 0``, an empty queue and a teacher equal to the student this is exactly InfoNCE;
use ``distill`` *instead of* ``infonce`` in a config (it contains the hard-target term).

The teacher and the queue are registered in this module, so they are saved in the training
state and a resumed run continues with the same teacher. Single-process only (the teacher
would need its own gathering across ranks).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from medvl.errors import ConfigError
from medvl.objectives.context import ObjectiveContext, TrainingDataInfo
from medvl.objectives.infonce import contrastive_inputs, soft_cross_entropy
from medvl.objectives.queue import QueueLoss


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``t <- m t + (1 - m) s`` for every parameter; buffers (e.g. BatchNorm statistics) copied."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


def distillation_targets(teacher_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * softmax(teacher_logits) + (1 - alpha) * one_hot(diagonal)`` over ``[B, B + Q]`` rows."""
    hard = torch.zeros_like(teacher_logits)
    hard[:, : teacher_logits.shape[0]].fill_diagonal_(1.0)
    return alpha * torch.softmax(teacher_logits, dim=1) + (1.0 - alpha) * hard


class MomentumDistillationLoss(nn.Module):
    """ALBEF's image-text contrastive loss with an EMA teacher and a teacher-feature queue."""

    needs_model = True

    def __init__(self, momentum: float = 0.995, alpha: float = 0.4, queue_size: int = 1024):
        super().__init__()
        if not 0.0 <= float(momentum) <= 1.0:
            raise ConfigError(f"objective 'distill': momentum must be in [0, 1], got {momentum}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ConfigError(f"objective 'distill': alpha must be in [0, 1], got {alpha}")
        if int(queue_size) < 0:
            raise ConfigError(f"objective 'distill': queue_size must be >= 0, got {queue_size}")
        self.momentum = float(momentum)
        self.alpha = float(alpha)
        self.queue = QueueLoss(int(queue_size)) if int(queue_size) > 0 else None
        self.teacher: nn.Module | None = None

    def bind(self, model: nn.Module, data: TrainingDataInfo | None = None) -> None:
        """The teacher starts as an exact, frozen copy of the student."""
        self.teacher = copy.deepcopy(model)
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.teacher.eval()

    def train(self, mode: bool = True) -> MomentumDistillationLoss:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher's targets must not carry dropout noise
        return self

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any] | None = None,
                context: ObjectiveContext | None = None) -> dict[str, torch.Tensor]:
        if context is None or self.teacher is None:
            raise ConfigError("objective 'distill' must be bound to a model (the trainer calls bind) and given "
                              "the step's context")
        img, txt, scale = contrastive_inputs(outputs, "distill")
        training = self.training and torch.is_grad_enabled()
        with torch.no_grad():
            if training:
                ema_update(self.teacher, context.model, self.momentum)
            t_out = self.teacher(context.images, context.input_ids, context.attention_mask)
            t_img, t_txt = t_out["image_features"].float(), t_out["text_features"].float()
            if self.queue is not None:
                self.queue._allocate(t_img.shape[1], t_img)
                q_img, q_txt = self.queue.queued()
                cand_img, cand_txt = torch.cat([t_img, q_img]), torch.cat([t_txt, q_txt])
            else:
                cand_img, cand_txt = t_img, t_txt
            target_i2t = distillation_targets(scale * t_img @ cand_txt.T, self.alpha)
            target_t2i = distillation_targets(scale * t_txt @ cand_img.T, self.alpha)
        loss = (soft_cross_entropy(scale * img @ cand_txt.T, target_i2t)
                + soft_cross_entropy(scale * txt @ cand_img.T, target_t2i)) / 2
        if training and self.queue is not None:
            self.queue.enqueue(t_img, t_txt)
        return {"loss": loss}
