"""Cross-rank gathering for contrastive losses.

Why with gradients: a contrastive loss over the global batch needs every rank's features as
negatives, and the local shard must receive the gradient of the *global* loss. As open_clip's
``gather_features(local_loss=False, gather_with_grad=True)``, we use
``torch.distributed.nn.functional.all_gather`` whose backward sums the gradients of each shard
back to its owner. Outside ``torch.distributed`` (or with one rank) everything is a no-op, so
the losses have one code path.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    """True when there is more than one rank to gather from."""
    return world_info()[1] > 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, differentiable w.r.t. the local shard."""
    if not is_distributed():
        return tensor
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # torch >= 2.x flags it as deprecated in favour of private functional collectives whose
        # names keep changing; this public autograd op is what open_clip uses and still works.
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(tensor.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (labels, ids...) from all ranks along dim 0, without autograd."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def gather_features(image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather image and text features across ranks, keeping gradients for the local shard.

    Rank ``r``'s rows sit at ``[r * B, (r + 1) * B)`` of the result, so the positives of a global
    batch stay on the diagonal. Every rank must pass the same batch size.
    """
    return gather_with_grad(image_features), gather_with_grad(text_features)
