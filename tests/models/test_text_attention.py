"""The SDPA text block equals the ``nn.TransformerEncoderLayer`` + float-mask forward it replaced.

The reference below is the tower's forward as it was before (float padding mask plus float
causal mask handed to the stock ``nn.TransformerEncoderLayer.forward``), run on the *same*
parameters, so features and gradients are compared one to one.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medvl.models.config import TextTowerConfig
from medvl.models.text_towers import TransformerTextTower, attention_mask_for, pool_tokens


def reference_tokens(tower: TransformerTextTower, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> torch.Tensor:
    """The previous implementation, verbatim in substance: float masks, stock encoder-layer forward."""
    seq = input_ids.shape[1]
    x = tower.token_embedding(input_ids) + tower.positional_embedding[:seq]
    pad = torch.zeros(attention_mask.shape, dtype=x.dtype).masked_fill(attention_mask == 0, float("-inf"))
    causal = torch.full((seq, seq), float("-inf"), dtype=x.dtype).triu(1) if tower.causal else None
    for layer in tower.layers:
        x = nn.TransformerEncoderLayer.forward(layer, x, src_mask=causal, src_key_padding_mask=pad)
    return tower.ln_final(x)


def _tower(causal: bool, pool: str, seed: int = 0) -> TransformerTextTower:
    torch.manual_seed(seed)
    cfg = TextTowerConfig(vocab_size=97, width=32, layers=2, heads=4, context_length=16, causal=causal, pool=pool)
    return TransformerTextTower(cfg)


def _batch(lengths: list[int], seq: int = 16, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (len(lengths), seq), generator=g)
    pos = torch.arange(seq)[None, :]
    n = torch.tensor(lengths)[:, None]
    mask = (pos >= seq - n) if left else (pos < n)
    return ids * mask, mask.long()


@pytest.mark.parametrize(("causal", "pool"), [(True, "eot"), (False, "cls"), (False, "mean")])
def test_same_features_and_gradients_as_reference(causal: bool, pool: str) -> None:
    tower = _tower(causal, pool).train()
    ids, mask = _batch([16, 3, 9, 1, 12])
    new = tower.forward_tokens(ids, mask)
    old = reference_tokens(tower, ids, mask)
    real = mask.bool()
    # Real tokens match everywhere; for bidirectional towers pad positions match too.
    torch.testing.assert_close(new[real], old[real], rtol=1e-5, atol=1e-5)
    if not causal:
        torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-5)
    # Gradients of the pooled output w.r.t. every parameter agree as well.
    w = torch.randn(5, tower.width, generator=torch.Generator().manual_seed(2))
    params = [p for p in tower.parameters()]
    g_new = torch.autograd.grad((pool_tokens(new, mask, pool) * w).sum(), params, allow_unused=True)
    g_old = torch.autograd.grad((pool_tokens(old, mask, pool) * w).sum(), params, allow_unused=True)
    for a, b in zip(g_new, g_old, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_weights_are_those_of_the_stock_layer() -> None:
    """Checkpoints written with ``nn.TransformerEncoderLayer`` load into the new block and back."""
    tower = _tower(True, "eot")
    stock = nn.ModuleList(nn.TransformerEncoderLayer(32, 4, 128, 0.0, activation="gelu", batch_first=True,
                                                     norm_first=True) for _ in range(2))
    stock.load_state_dict(tower.layers.state_dict(), strict=True)
    tower.layers.load_state_dict(stock.state_dict(), strict=True)
    torch.manual_seed(0)
    again = _tower(True, "eot")  # same seed, same initial weights as the stock layer would give
    torch.manual_seed(0)
    nn.Embedding(97, 32)
    first = nn.TransformerEncoderLayer(32, 4, 128, 0.0, activation="gelu", batch_first=True, norm_first=True)
    torch.testing.assert_close(again.layers[0].state_dict(), first.state_dict())


def test_causal_left_padding_is_finite_and_masks_the_pads() -> None:
    """Left padding under a causal mask: the old float masks left the first pad row with no key at all
    (NaN everywhere, since the NaN spreads through the next layer's keys); now each position may
    see itself, and every real token sees exactly the real tokens before it."""
    tower = _tower(True, "mean").eval()
    ids, mask = _batch([16, 4, 7], left=True)
    attn, is_causal = attention_mask_for(mask, causal=True)
    assert attn is not None and not is_causal and attn.shape == (3, 1, 16, 16)
    with torch.no_grad():
        new = tower.forward_tokens(ids, mask)
        assert torch.isnan(reference_tokens(tower, ids, mask)).any()  # the bug this replaces
        # Reference: stock layers with the same visibility as an explicit float [B*heads, L, L] mask.
        x = tower.token_embedding(ids) + tower.positional_embedding[:16]
        allowed = attn.expand(3, 4, 16, 16).reshape(12, 16, 16)
        float_mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
        for layer in tower.layers:
            x = nn.TransformerEncoderLayer.forward(layer, x, src_mask=float_mask)
        old = tower.ln_final(x)
    assert torch.isfinite(new).all()
    real = mask.bool()
    torch.testing.assert_close(new[real], old[real], rtol=1e-5, atol=1e-5)
    # Changing a pad token's id changes no real token's state.
    ids2 = ids.clone()
    ids2[~real] = 5
    with torch.no_grad():
        torch.testing.assert_close(tower.forward_tokens(ids2, mask)[real], new[real])


def test_mask_choice_never_materialises_what_it_does_not_need() -> None:
    full = torch.ones(4, 8, dtype=torch.long)
    assert attention_mask_for(full, causal=True) == (None, True)
    assert attention_mask_for(full, causal=False) == (None, False)
    _, right = _batch([8, 3, 5, 1], seq=8)
    assert attention_mask_for(right, causal=True) == (None, True)
    key, is_causal = attention_mask_for(right, causal=False)
    assert key is not None and key.shape == (4, 1, 1, 8) and key.dtype == torch.bool and not is_causal


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    tower = _tower(True, "eot").train()
    ids, mask = _batch([16, 5, 11])
    plain = torch.autograd.grad(tower(ids, mask).sum(), list(tower.parameters()))
    tower.set_grad_checkpointing(True)
    ckpt = torch.autograd.grad(tower(ids, mask).sum(), list(tower.parameters()))
    for a, b in zip(plain, ckpt, strict=True):
        torch.testing.assert_close(a, b)


def test_dropout_is_active_in_training_only() -> None:
    torch.manual_seed(0)
    cfg = TextTowerConfig(vocab_size=97, width=32, layers=2, heads=4, context_length=16, dropout=0.5)
    tower = TransformerTextTower(cfg)
    ids, mask = _batch([16, 6])
    tower.train()
    assert not torch.allclose(tower(ids, mask), tower(ids, mask))
    tower.eval()
    torch.testing.assert_close(tower(ids, mask), tower(ids, mask))


@pytest.mark.parametrize(("causal", "pool", "left"), [(True, "eot", False), (False, "cls", False),
                                                      (True, "eot", True), (True, "cls", False)])
def test_pooled_forward_equals_pooling_every_token(causal: bool, pool: str, left: bool) -> None:
    """``forward`` runs the last block at the pooled position only; same features and gradients."""
    tower = _tower(causal, pool).train()
    ids, mask = _batch([16, 3, 9, 1, 12], left=left)
    w = torch.randn(5, tower.width, generator=torch.Generator().manual_seed(5))
    params = list(tower.parameters())
    fast = tower(ids, mask)
    full = pool_tokens(tower.forward_tokens(ids, mask), mask, pool)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    g_fast = torch.autograd.grad((fast * w).sum(), params, allow_unused=True)
    g_full = torch.autograd.grad((full * w).sum(), params, allow_unused=True)
    for a, b in zip(g_fast, g_full, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # fp32 summation order
    tower.set_grad_checkpointing(True)
    torch.testing.assert_close(tower(ids, mask), fast)
