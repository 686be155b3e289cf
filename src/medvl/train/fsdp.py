"""FSDP2 (``torch.distributed.fsdp.fully_shard``): shard parameters, gradients and optimizer state.

Why next to DDP: DDP keeps a full copy of the model, its gradients and the AdamW moments on every
rank (16 bytes per parameter in fp32); FSDP2 keeps ``1 / world_size`` of them per rank and
all-gathers one block's parameters just before that block runs, so towers that do not fit one
device still train. It is PyTorch's own engine: parameters become ``DTensor`` shards and the
optimizer, gradient clipping and the trainer's loop work on them unchanged.

What this module adds around ``fully_shard``:

* :func:`shard_model` -- one FSDP unit per transformer block / ResNet stage of each tower (found
  by :func:`tower_blocks`), then the root (embeddings, projections, temperature). A unit is the
  granularity of the all-gather: per block, so at most one block is unsharded at a time.
* :func:`full_model_state` / :func:`full_optimizer_state` -- collective calls that assemble full
  (unsharded) state dicts on rank 0 for the checkpoint, so a checkpoint written under FSDP is the
  same ``weights.safetensors`` + ``train_state.pt`` a 1-process run writes (loadable anywhere,
  resumable under DDP, FSDP or one process);
* :func:`load_optimizer_state` -- the reverse for ``--resume``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def _is_block_list(node: Any) -> bool:
    return isinstance(node, (nn.ModuleList, nn.Sequential)) and len(node) > 0


def tower_blocks(tower: nn.Module) -> list[nn.Module]:
    """The repeated blocks of an image or text tower (the FSDP units and checkpointing units).

    medvl's text transformer: ``layers``; a Hugging Face encoder: ``model.encoder.layer`` and
    friends; timm: ``trunk.blocks`` (ViT), ``trunk.stages`` (ConvNeXt, EfficientNet-like),
    ``trunk.layer1..4`` (ResNet); the 3D ResNet: ``stages``. Unknown layouts give an empty list,
    and the whole tower then belongs to the root unit (correct, only less memory-efficient).
    """
    from medvl.models.text_towers import _find_layer_list

    candidates: list[Any] = [getattr(tower, "layers", None), getattr(tower, "stages", None)]
    inner = getattr(tower, "model", None)
    if isinstance(inner, nn.Module):
        candidates.append(_find_layer_list(inner))
    trunk = getattr(tower, "trunk", None) or getattr(getattr(tower, "tower", None), "trunk", None)
    if isinstance(trunk, nn.Module):
        candidates += [getattr(trunk, "blocks", None), getattr(trunk, "stages", None)]
        layers = [getattr(trunk, f"layer{i}", None) for i in range(1, 5)]
        if all(isinstance(m, nn.Module) for m in layers):
            return [m for m in layers if isinstance(m, nn.Module)]
    for node in candidates:
        if _is_block_list(node):
            return list(node)
    return []


def shard_model(model: nn.Module, mesh: Any = None) -> nn.Module:
    """Apply ``fully_shard`` per block of both towers, then to the root; returns ``model`` (sharded in place).

    Call after the model is on its device and before the optimizer is built (the optimizer must
    see the sharded ``DTensor`` parameters). ``reshard_after_forward=True`` (ZeRO-3): parameters
    are gathered again for the backward, the memory-lean choice. Scalar parameters (the learned
    temperature and bias) cannot be sharded: they stay replicated, and a gradient hook averages
    their gradient over ranks, as DDP would (see :func:`replicated_params`).
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    scalars = {p for p in model.parameters() if p.ndim == 0}
    for tower_name in ("visual", "text"):
        tower = getattr(model, tower_name, None)
        if isinstance(tower, nn.Module):
            for block in tower_blocks(tower):
                if any(p not in scalars for p in block.parameters()):
                    fully_shard(block, mesh=mesh, ignored_params=scalars & set(block.parameters()) or None)
    fully_shard(model, mesh=mesh, ignored_params=scalars or None)
    world = dist.get_world_size()
    for p in scalars:
        if p.requires_grad:
            p.register_hook(lambda g: _mean_over_ranks(g, world))
    model._medvl_replicated = sorted(scalars, key=id)  # type: ignore[assignment]
    return model


def _mean_over_ranks(grad: torch.Tensor, world: int) -> torch.Tensor:
    import torch.distributed as dist

    grad = grad.clone()
    dist.all_reduce(grad)
    return grad / world


def replicated_params(model: nn.Module) -> list[nn.Parameter]:
    """The parameters :func:`shard_model` left replicated (plain tensors among the ``DTensor`` shards).

    The optimizer keeps them in a param group of their own: multi-tensor kernels do not mix
    ``DTensor`` and plain tensors in one call.
    """
    return list(getattr(model, "_medvl_replicated", []))


def split_replicated(groups: list[dict[str, Any]], replicated: list[nn.Parameter]) -> list[dict[str, Any]]:
    """Move ``replicated`` parameters out of the optimizer ``groups`` into groups of their own
    (same hyper-parameters), so each group is all-``DTensor`` or all-plain."""
    rep = {id(p) for p in replicated}
    out: list[dict[str, Any]] = []
    for g in groups:
        sharded = [p for p in g["params"] if id(p) not in rep]
        plain = [p for p in g["params"] if id(p) in rep]
        out += [{**g, "params": ps} for ps in (sharded, plain) if ps]
    return out


def is_dtensor(t: torch.Tensor) -> bool:
    """True for a ``DTensor`` (an FSDP shard); False on torch builds without distributed support."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def is_sharded(model: nn.Module) -> bool:
    """True when ``model`` went through :func:`shard_model` (its parameters are ``DTensor`` shards)."""
    return any(is_dtensor(p) for p in model.parameters())


def to_local_value(t: torch.Tensor) -> torch.Tensor:
    """A full, ordinary tensor from a ``DTensor`` (collective) or the tensor itself."""
    if not torch.distributed.is_available():  # torch built without distributed: no DTensors exist
        return t
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU state dict on rank 0 (``{}`` on other ranks). Collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Unsharded optimizer state (keyed by parameter names) on rank 0, ``{}`` elsewhere. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full optimizer state (from :func:`full_optimizer_state`) into a sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


class FullStateView:
    """What :func:`medvl.models.save_model` reads from a model (``state_dict()``, ``config``),
    backed by a gathered full state dict, so rank 0 saves a sharded model without a second copy."""

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor]):
        self._state = state
        self.config = model.config  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


def sharded_bytes(params: Iterable[torch.Tensor]) -> int:
    """Bytes this rank holds for ``params`` (local shards for ``DTensor``s)."""
    from torch.distributed.tensor import DTensor

    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() * p.element_size() for p in params)
