"""Decoding strategies on a toy model whose next-token distribution depends on the whole prefix:
beam search with enough beams finds the brute-force best sequence under the same length
penalty, greedy batched equals greedy one by one, sampling is seeded and respects top-p."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from medvl.errors import ConfigError
from medvl.generate.decoding import DecodeConfig, beam_search, decode, greedy, sample, top_p_filter

V, BOS, EOS = 5, 0, 1  # tokens 2..4 are words


def toy_fn(seed: int = 0):
    """Logits from a hash of (input row, prefix): deterministic, prefix-dependent, row-dependent."""

    def fn(ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        out = []
        for seq, r in zip(ids.tolist(), rows.tolist(), strict=True):
            g = torch.Generator().manual_seed(hash((seed, r, tuple(seq))) % (2**31))
            logits = torch.randn(V, generator=g) * 2
            logits[BOS] = -1e4  # never generate the start token
            out.append(logits)
        return torch.stack(out)

    return fn


def brute_force(fn, row: int, max_new: int, lp: float, min_new: int = 1) -> tuple[list[int], float]:
    """Score every sequence (ended by EOS, or cut at max_new) exactly as the decoder defines it."""
    best, best_score = None, -math.inf
    words = [t for t in range(V) if t not in (BOS, EOS)]
    for n in range(0, max_new + 1):
        for body in itertools.product(words, repeat=n):
            ended = n < max_new
            if ended and n < min_new:
                continue
            seq = [BOS, *body] + ([EOS] if ended else [])
            total = 0.0
            for i in range(1, len(seq)):
                logp = torch.log_softmax(fn(torch.tensor([seq[:i]]), torch.tensor([row]))[0].float(), -1)
                if i - 1 < min_new:
                    logp[EOS] = -math.inf
                    logp = logp  # EOS forbidden: the other tokens keep their log-probs (no renormalising)
                total += float(logp[seq[i]])
            score = total / (n + int(ended)) ** lp
            if score > best_score:
                best, best_score = list(body), score
    assert best is not None
    return best, best_score


@pytest.mark.parametrize("lp", [0.0, 1.0, 2.0])
def test_beam_search_with_enough_beams_is_exact(lp: float) -> None:
    fn = toy_fn()
    cfg = DecodeConfig(method="beam", max_new_tokens=3, num_beams=30, length_penalty=lp)
    got = beam_search(fn, 3, BOS, EOS, cfg)
    for row in range(3):
        tokens, score = brute_force(fn, row, 3, lp)
        assert got[row].tokens == tokens
        assert got[row].score == pytest.approx(score, abs=1e-5)


def test_small_beam_is_never_better_than_the_optimum_and_beats_greedy_on_average() -> None:
    fn = toy_fn(seed=3)
    n = 6
    cfg = DecodeConfig(method="beam", max_new_tokens=3, num_beams=2, length_penalty=1.0)
    beams = beam_search(fn, n, BOS, EOS, cfg)
    greedy_out = greedy(fn, n, BOS, EOS, DecodeConfig(max_new_tokens=3, length_penalty=1.0))
    for row in range(n):
        _, best = brute_force(fn, row, 3, 1.0)
        assert beams[row].score <= best + 1e-6
        assert greedy_out[row].score <= best + 1e-6
    assert sum(b.score for b in beams) >= sum(g.score for g in greedy_out) - 1e-6


def test_greedy_batched_equals_single() -> None:
    fn = toy_fn(seed=1)
    cfg = DecodeConfig(max_new_tokens=6)
    batched = greedy(fn, 5, BOS, EOS, cfg)

    for row in range(5):
        def single(ids, rows, row=row):
            return fn(ids, torch.full_like(rows, row))

        one = greedy(single, 1, BOS, EOS, cfg)[0]
        assert one.tokens == batched[row].tokens and one.finished == batched[row].finished
        assert one.score == pytest.approx(batched[row].score)
    assert any(not g.finished for g in batched) or all(g.finished for g in batched)


def test_min_new_tokens_forbids_empty_output_and_max_cuts() -> None:
    def eos_first(ids, rows):
        logits = torch.zeros(len(rows), V)
        logits[:, EOS] = 10.0
        return logits

    out = greedy(eos_first, 2, BOS, EOS, DecodeConfig(max_new_tokens=4, min_new_tokens=2))
    assert all(len(g.tokens) == 2 and g.finished for g in out)
    out = greedy(eos_first, 1, BOS, EOS, DecodeConfig(max_new_tokens=4, min_new_tokens=0))
    assert out[0].tokens == [] and out[0].finished

    def never_ends(ids, rows):
        logits = torch.zeros(len(rows), V)
        logits[:, 2] = 10.0
        return logits

    for method in ("greedy", "beam", "sample"):
        g = decode(never_ends, 2, BOS, EOS, DecodeConfig(method=method, max_new_tokens=5, num_beams=2))
        assert all(x.tokens == [2] * 5 and not x.finished for x in g), method


def test_sampling_is_seeded_and_top_p_keeps_the_nucleus() -> None:
    fn = toy_fn(seed=2)
    cfg = DecodeConfig(method="sample", max_new_tokens=6, seed=7, temperature=1.5)
    a, b = sample(fn, 8, BOS, EOS, cfg), sample(fn, 8, BOS, EOS, cfg)
    assert [g.tokens for g in a] == [g.tokens for g in b]
    c = sample(fn, 8, BOS, EOS, DecodeConfig(method="sample", max_new_tokens=6, seed=8, temperature=1.5))
    assert [g.tokens for g in a] != [g.tokens for g in c]
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(top_p_filter(logits, 0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False, False]]
    # top_p tiny: sampling equals greedy
    greedy_out = greedy(fn, 4, BOS, EOS, DecodeConfig(max_new_tokens=5))
    nucleus = sample(fn, 4, BOS, EOS, DecodeConfig(method="sample", max_new_tokens=5, top_p=1e-6))
    assert [g.tokens for g in greedy_out] == [g.tokens for g in nucleus]


@pytest.mark.parametrize("bad, match", [
    ({"method": "topk"}, "unknown decoding method"), ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"temperature": 0}, "temperature"), ({"top_p": 1.5}, "top_p"), ({"num_beams": 0}, "num_beams"),
    ({"min_new_tokens": 99}, "min_new_tokens"),
])
def test_bad_decoding_options_are_refused(bad: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DecodeConfig(**bad).validate()
