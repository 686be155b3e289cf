"""A ``LogitsFn`` over a Hugging Face causal LM that keeps a key/value cache in step with medvl's
decoding loops.

Why: without a cache every step re-runs the whole prompt plus the tokens so far (quadratic in the
length). The decoding loops of :mod:`medvl.generate.decoding` drop finished sequences and, in beam
search, reorder and duplicate them, and tell the model only ``(ids, rows)``. The cache therefore
finds each new sequence's *parent* -- the cached sequence of the same input whose tokens are the new
one's minus its last token -- and reorders the cache to those parents (``Cache.reorder_cache``),
then feeds only the last token. The result is the same as the uncached computation (up to float
summation order); tests check the tokens agree.

Prompts are per-input embedding sequences (a LLaVA prompt with image tokens spliced in, or plain
token embeddings); they are left-padded together with an attention mask and explicit position ids,
so batched and single decoding see the same positions.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch


def _cache_kwarg(lm: Any) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (older): the name the LM's forward takes."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # a peft wrapper forwards **kwargs
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _returned_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class CachedCausalLM:
    """Callable ``(ids [N, T], rows [N]) -> logits [N, V]``; ``ids[:, 0]`` is the loops' start slot
    (never fed: the prompt ends where generation starts). Use one instance per :func:`decode` call."""

    def __init__(self, lm: Any, prompts: Sequence[torch.Tensor]):
        self.lm = lm
        self.prompts = list(prompts)  # per input row: [P_b, D] embeddings
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        self.last_pos: torch.Tensor | None = None
        self.index: dict[tuple[int, tuple[int, ...]], int] = {}
        self.cache_kw = _cache_kwarg(lm)

    @torch.no_grad()
    def _start(self, rows: list[int]) -> torch.Tensor:
        parts = [self.prompts[r] for r in rows]
        width = max(p.shape[0] for p in parts)
        dev, dtype = parts[0].device, parts[0].dtype
        embeds = torch.zeros(len(parts), width, parts[0].shape[1], device=dev, dtype=dtype)
        mask = torch.zeros(len(parts), width, dtype=torch.long, device=dev)
        for j, p in enumerate(parts):
            embeds[j, width - p.shape[0]:] = p
            mask[j, width - p.shape[0]:] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True)
        self.cache, self.mask, self.last_pos = _returned_cache(out), mask, pos[:, -1]
        return out.logits[:, -1]

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        row_list = rows.tolist()
        seqs = [tuple(ids[i, 1:].tolist()) for i in range(ids.shape[0])]
        if ids.shape[1] == 1 or self.cache is None:
            logits = self._start(row_list)
        else:
            try:
                parents = [self.index[(r, s[:-1])] for r, s in zip(row_list, seqs, strict=True)]
            except KeyError as exc:  # a loop that does not extend its previous sequences by one token
                raise RuntimeError("CachedCausalLM: a sequence has no cached parent; use one instance per "
                                   "decode() call") from exc
            assert self.mask is not None and self.last_pos is not None
            idx = torch.tensor(parents, device=self.mask.device)
            self.cache.reorder_cache(idx)
            mask = torch.cat([self.mask[idx], self.mask.new_ones(len(parents), 1)], dim=1)
            pos = self.last_pos[idx] + 1
            new = self.lm.get_input_embeddings()(ids[:, -1:].to(mask.device))
            out = self.lm(inputs_embeds=new, attention_mask=mask, position_ids=pos[:, None], use_cache=True,
                          **{self.cache_kw: self.cache})
            self.cache, self.mask, self.last_pos = _returned_cache(out), mask, pos
            logits = out.logits[:, -1]
        self.index = {(r, s): i for i, (r, s) in enumerate(zip(row_list, seqs, strict=True))}
        return logits
