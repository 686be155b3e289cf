"""Decoding strategies, independent of the model: greedy, beam search (with a length penalty) and
sampling (temperature, nucleus top-p), batched.

Why model-independent: the same loops drive the CoCa caption decoder, the LLaVA-style adapter
and (in ``benchmarks/generation_speed.py``) a plain Hugging Face LM, so a speed or quality
difference between systems is never a difference in the decoding code.

The model is a ``LogitsFn``: ``fn(ids [N, T], rows [N]) -> logits [N, V]`` of the next token,
where ``rows`` says which input of the batch (which image) each sequence belongs to -- beams and
finished sequences make N differ from the batch size. Every sequence starts with ``bos_id`` and
ends at ``eos_id`` or after ``max_new_tokens``. Results exclude the start token and the end
token; :class:`Generation` says whether the end token was reached.

Scores: the sum of the tokens' log-probabilities divided by ``length ** length_penalty`` where
length counts the generated tokens including the end token (``length_penalty > 0`` favours
longer reports, ``0`` is the plain sum: GNMT's and Hugging Face's convention up to the length
definition).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from medvl.errors import ConfigError

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
METHODS = ("greedy", "beam", "sample")


@dataclass
class DecodeConfig:
    """How to decode; ``method`` is one of :data:`METHODS`."""

    method: str = "greedy"
    max_new_tokens: int = 60
    min_new_tokens: int = 1
    num_beams: int = 4
    length_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def validate(self) -> DecodeConfig:
        if self.method not in METHODS:
            raise ConfigError(f"unknown decoding method {self.method!r}; valid: {', '.join(METHODS)}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                              f"got {self.min_new_tokens}")
        if self.num_beams < 1:
            raise ConfigError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        return self


@dataclass
class Generation:
    """One generated sequence: token ids (no start/end token), its score, whether it ended."""

    tokens: list[int]
    score: float
    finished: bool


def _log_probs(fn: LogitsFn, ids: torch.Tensor, rows: torch.Tensor, step: int, cfg: DecodeConfig,
               eos_id: int) -> torch.Tensor:
    logits = fn(ids, rows).float()
    logp = torch.log_softmax(logits, dim=-1)
    if step < cfg.min_new_tokens:  # an empty report is not a report: forbid the end token early on
        logp[:, eos_id] = float("-inf")
    return logp


def greedy(fn: LogitsFn, batch_size: int, bos_id: int, eos_id: int, cfg: DecodeConfig,
           device: torch.device | str = "cpu") -> list[Generation]:
    """Most likely token at each step; finished sequences leave the batch (no wasted compute)."""
    return _stepwise(fn, batch_size, bos_id, eos_id, cfg, device, sample=False)


def sample(fn: LogitsFn, batch_size: int, bos_id: int, eos_id: int, cfg: DecodeConfig,
           device: torch.device | str = "cpu") -> list[Generation]:
    """Draw each token from the temperature-scaled distribution restricted to the top-p nucleus.

    Uses its own generator seeded with ``cfg.seed``: the same seed gives the same reports.
    """
    return _stepwise(fn, batch_size, bos_id, eos_id, cfg, device, sample=True)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf every token outside the smallest set whose probability reaches ``top_p``."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above this one
    drop_sorted = before >= top_p  # the top token is always kept (before == 0)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _stepwise(fn: LogitsFn, batch_size: int, bos_id: int, eos_id: int, cfg: DecodeConfig,
              device: torch.device | str, sample: bool) -> list[Generation]:
    cfg.validate()
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed) if sample else None
    ids = torch.full((batch_size, 1), bos_id, dtype=torch.long, device=device)
    rows = torch.arange(batch_size, device=device)
    scores = torch.zeros(batch_size, device=device)
    out: list[Generation | None] = [None] * batch_size
    for step in range(cfg.max_new_tokens):
        logp = _log_probs(fn, ids, rows, step, cfg, eos_id)
        if sample:
            logits = top_p_filter(logp / cfg.temperature, cfg.top_p)
            probs = logits.softmax(dim=-1).cpu()
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1).to(device)
        else:
            nxt = logp.argmax(dim=-1)
        scores = scores + logp.gather(1, nxt[:, None]).squeeze(1)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done = nxt == eos_id
        last = step == cfg.max_new_tokens - 1
        for i in (torch.arange(len(rows), device=device) if last else done.nonzero().flatten()).tolist():
            ended = bool(done[i])
            toks = ids[i, 1:-1] if ended else ids[i, 1:]
            n = toks.numel() + int(ended)
            out[int(rows[i])] = Generation(toks.tolist(), float(scores[i]) / n ** cfg.length_penalty, ended)
        keep = ~done
        if last or not keep.any():
            break
        ids, rows, scores = ids[keep], rows[keep], scores[keep]
    assert all(g is not None for g in out)
    return [g for g in out if g is not None]


def beam_search(fn: LogitsFn, batch_size: int, bos_id: int, eos_id: int, cfg: DecodeConfig,
                device: torch.device | str = "cpu") -> list[Generation]:
    """Beam search with ``cfg.num_beams`` beams per input and the length penalty of the module doc.

    Each step expands every live beam, keeps the ``2 * num_beams`` best continuations per input,
    moves those ending in ``eos_id`` to the input's finished list and continues with the best
    ``num_beams`` others. An input stops once it has ``num_beams`` finished hypotheses and no live
    beam can still beat the worst of them (an exact bound, so the result does not depend on when
    the loop stops); at ``max_new_tokens`` the live beams are finished as they are.
    """
    cfg.validate()
    k = cfg.num_beams
    lp = cfg.length_penalty
    ids = torch.full((batch_size, 1), bos_id, dtype=torch.long, device=device)
    rows = torch.arange(batch_size, device=device)
    scores = torch.zeros(batch_size, device=device)  # raw log-prob sums of the live beams
    finished: list[list[Generation]] = [[] for _ in range(batch_size)]
    done = [False] * batch_size

    def normalised(raw: float, length: int) -> float:
        return raw / length ** lp

    def best_possible(raw: float, length: int) -> float:
        # Later tokens only lower the raw sum (log-probs <= 0); the length term is bounded by the
        # longest allowed sequence (lp >= 0) or by the current length (lp < 0).
        bound_len = cfg.max_new_tokens if lp >= 0 else length
        return raw / bound_len ** lp

    for step in range(cfg.max_new_tokens):
        logp = _log_probs(fn, ids, rows, step, cfg, eos_id)
        vocab = logp.shape[1]
        total = scores[:, None] + logp  # [N, V]
        last = step == cfg.max_new_tokens - 1
        new_ids, new_rows, new_scores = [], [], []
        for b in range(batch_size):
            if done[b]:
                continue
            mine = (rows == b).nonzero().flatten()
            if mine.numel() == 0:
                done[b] = True
                continue
            flat = total[mine].flatten()
            n_cand = min(2 * k, int(torch.isfinite(flat).sum()))
            top_scores, top_idx = flat.topk(n_cand)
            live = 0
            for s, idx in zip(top_scores.tolist(), top_idx.tolist(), strict=True):
                beam, tok = mine[idx // vocab], idx % vocab
                seq = ids[beam, 1:].tolist()
                if tok == eos_id:
                    finished[b].append(Generation(seq, normalised(s, len(seq) + 1), True))
                    continue
                if live < k:
                    if last:
                        finished[b].append(Generation(seq + [tok], normalised(s, len(seq) + 1), False))
                    else:
                        new_ids.append(torch.cat([ids[beam], ids.new_tensor([tok])]))
                        new_rows.append(b)
                        new_scores.append(s)
                    live += 1
            finished[b].sort(key=lambda g: -g.score)
            del finished[b][k:]
            if last:
                done[b] = True
            elif len(finished[b]) >= k:
                live_best = max((sc for r, sc in zip(new_rows, new_scores, strict=True) if r == b),
                                default=-math.inf)
                if best_possible(live_best, step + 2) <= finished[b][-1].score:
                    done[b] = True
        if all(done) or not new_ids:
            break
        keep = [i for i, r in enumerate(new_rows) if not done[r]]
        if not keep:
            break
        ids = torch.stack([new_ids[i] for i in keep])
        rows = torch.tensor([new_rows[i] for i in keep], device=device)
        scores = torch.tensor([new_scores[i] for i in keep], device=device)
    return [max(f, key=lambda g: g.score) for f in finished]


def decode(fn: LogitsFn, batch_size: int, bos_id: int, eos_id: int, cfg: DecodeConfig,
           device: torch.device | str = "cpu") -> list[Generation]:
    """Dispatch on ``cfg.method``; one :class:`Generation` per input, in input order."""
    cfg.validate()
    if cfg.method == "beam":
        return beam_search(fn, batch_size, bos_id, eos_id, cfg, device)
    if cfg.method == "sample":
        return sample(fn, batch_size, bos_id, eos_id, cfg, device)
    return greedy(fn, batch_size, bos_id, eos_id, cfg, device)
