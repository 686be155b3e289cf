"""Text towers: a small transformer trained from scratch, or a Hugging Face ``AutoModel``.

Both map ``(input_ids, attention_mask)`` to pooled features ``[B, width]`` and support
``set_grad_checkpointing``, ``lock(unlocked_layers)`` and ``resize_vocab``/``width``, so
:class:`~medvl.models.clip.CLIPModel` does not care which one it holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvl.errors import CheckpointError, ConfigError
from medvl.models.config import TextTowerConfig

POOLS = ("eot", "cls", "mean")


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bar (an unused BERT pooler is expected)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def pool_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor, pool: str) -> torch.Tensor:
    """Pool ``[B, L, W]`` token states to ``[B, W]``.

    ``eot``: the last non-padding token (the end-of-text token, the only one that has seen the
    whole caption under a causal mask); ``cls``: position 0; ``mean``: average over real tokens.
    """
    if pool == "cls":
        return hidden[:, 0]
    if pool == "eot":
        last = attention_mask.long().sum(dim=1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pool == "mean":
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-6)
    raise ConfigError(f"unknown text.pool {pool!r}; valid: {', '.join(POOLS)}")


class TextBlock(nn.TransformerEncoderLayer):
    """A pre-norm ``nn.TransformerEncoderLayer`` whose forward calls ``scaled_dot_product_attention`` directly.

    Why a subclass: parameter names, shapes and initialisation stay exactly those of the PyTorch
    layer (so checkpoints written before this class existed load unchanged, and a seed gives the
    same weights), while the forward skips ``nn.MultiheadAttention``'s mask merging, which
    expands a float padding mask plus a float causal mask into a ``[B * heads, L, L]`` tensor in
    every layer of every step. Here the mask is either absent (``is_causal`` picks the fused
    causal kernel) or one boolean tensor built once per forward and shared by all layers.
    """

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,  # type: ignore[override]
                is_causal: bool = False, positions: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L, W] -> [B, L, W]``; with ``positions`` (one per row), ``[B, W]`` at those positions
        only (:meth:`forward_at`, ``attn_mask`` then being the ``[B, 1, 1, L]`` key mask). One entry
        point, so module hooks (FSDP's all-gather, checkpointing) see both uses."""
        if positions is not None:
            return self.forward_at(x, positions, attn_mask)
        x = x + self.dropout1(self._attend(self.norm1(x), attn_mask, is_causal))
        return x + self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(self.norm2(x))))))

    def forward_at(self, x: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """The block's output ``[B, W]`` at one position per row only (what a pooled tower needs).

        Keys and values come from every token, the query and the MLP only from ``positions``:
        the MLP (2/3 of the block's work) runs on B rows instead of B * L. ``key_mask``
        ``[B, 1, 1, L]`` (bool) says which keys each row's query may see.
        """
        attn = self.self_attn
        b, seq, width = x.shape
        heads = attn.num_heads
        rows = torch.arange(b, device=x.device)
        h = self.norm1(x)
        w_q, w_kv = attn.in_proj_weight.split([width, 2 * width])
        b_q, b_kv = (None, None) if attn.in_proj_bias is None else attn.in_proj_bias.split([width, 2 * width])
        q = F.linear(h[rows, positions], w_q, b_q).view(b, 1, heads, width // heads).transpose(1, 2)
        k, v = F.linear(h, w_kv, b_kv).view(b, seq, 2, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask,
                                             dropout_p=attn.dropout if self.training else 0.0)
        y = x[rows, positions] + self.dropout1(attn.out_proj(out.reshape(b, width)))
        return y + self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(self.norm2(y))))))

    def _attend(self, h: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
        attn = self.self_attn
        b, seq, width = h.shape
        heads = attn.num_heads
        qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(b, seq, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                             dropout_p=attn.dropout if self.training else 0.0)
        return attn.out_proj(out.transpose(1, 2).reshape(b, seq, width))


def attention_mask_for(attention_mask: torch.Tensor, causal: bool) -> tuple[torch.Tensor | None, bool]:
    """``(attn_mask, is_causal)`` for :class:`TextBlock` from a ``[B, L]`` 1/0 padding mask.

    * no padding: no mask (causal towers: ``is_causal=True``, the fused kernel's own mask);
    * causal with right padding (what the tokenizer produces, every row ``1..1 0..0``): also just
      ``is_causal=True`` -- under a causal mask a real token never sees the pads that follow it,
      so its state is exactly what a padding mask would give (pad positions themselves are never
      read: pooling and ``word_mask`` skip them);
    * bidirectional with padding: a ``[B, 1, 1, L]`` boolean key mask (broadcast, not expanded);
    * causal with any other padding (left or holes): one ``[B, 1, L, L]`` boolean mask for all
      layers; each position may always see itself, so a fully padded row stays finite.
    Deciding between the cases reads the mask once (a host sync on GPU, ~tens of microseconds).
    """
    keep = attention_mask.bool()
    if bool(keep.all()):
        return None, causal
    if not causal:
        return keep[:, None, None, :], False
    if bool((keep[:, 1:] <= keep[:, :-1]).all()):  # every row is a prefix: right padding
        return None, True
    seq = keep.shape[1]
    tril = torch.ones(seq, seq, dtype=torch.bool, device=keep.device).tril()
    eye = torch.eye(seq, dtype=torch.bool, device=keep.device)
    return (keep[:, None, None, :] & tril) | eye, False


class TransformerTextTower(nn.Module):
    """Token + learned position embeddings, pre-norm :class:`TextBlock` stack, final norm.

    ``causal: true`` gives the CLIP text encoder (pool ``eot``); ``causal: false`` a BERT-like
    one (pool ``cls`` or ``mean``). Padding never changes a real token's state in either case
    (see :func:`attention_mask_for` for how that is done without per-layer float masks).
    """

    def __init__(self, cfg: TextTowerConfig, load_pretrained: bool = True):
        super().__init__()
        if cfg.pool not in POOLS:
            raise ConfigError(f"unknown text.pool {cfg.pool!r}; valid: {', '.join(POOLS)}")
        if cfg.width % cfg.heads:
            raise ConfigError(f"text.width ({cfg.width}) must be divisible by text.heads ({cfg.heads})")
        self.width = cfg.width
        self.causal = cfg.causal
        self.pool = cfg.pool
        self.context_length = cfg.context_length
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.width))
        self.layers = nn.ModuleList(
            TextBlock(cfg.width, cfg.heads, int(cfg.width * cfg.mlp_ratio), cfg.dropout,
                      activation="gelu", batch_first=True, norm_first=True)
            for _ in range(cfg.layers)
        )
        self.ln_final = nn.LayerNorm(cfg.width)
        self.grad_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # CLIP's init: small normal embeddings keep early logits near zero.
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

    def resize_vocab(self, vocab_size: int) -> None:
        """Re-create the token embedding for a new tokenizer (only sensible before training)."""
        if vocab_size != self.token_embedding.num_embeddings:
            device = self.token_embedding.weight.device
            self.token_embedding = nn.Embedding(vocab_size, self.width).to(device)
            nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled features ``[B, width]``, equal to pooling :meth:`forward_tokens` (fp32 tolerance).

        For ``eot``/``cls`` pooling only one position per row is read, so the last block runs its
        query and MLP at that position only (:meth:`TextBlock.forward_at`) and the final norm
        sees B rows instead of B * L; ``mean`` pooling needs every token.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.pool == "mean" or not len(self.layers):
            return pool_tokens(self.forward_tokens(input_ids, attention_mask), attention_mask, self.pool)
        x = self._run(input_ids, attention_mask, list(self.layers)[:-1])
        if self.pool == "cls":
            positions = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        else:
            positions = attention_mask.long().sum(dim=1).clamp(min=1) - 1
        # The pooled query's row of the mask forward_tokens would use (attention_mask_for).
        keys = attention_mask.bool()[:, None, None, :]
        if self.causal:
            idx = torch.arange(x.shape[1], device=x.device)[None, :]
            seen = (idx <= positions[:, None])[:, None, None, :]
            keys = (keys & seen) | (idx == positions[:, None])[:, None, None, :]
        return self.ln_final(self.layers[-1](x, keys, False, positions))

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token states ``[B, L, width]`` after the final norm."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.ln_final(self._run(input_ids, attention_mask, list(self.layers)))

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: list[nn.Module]) -> torch.Tensor:
        seq = input_ids.shape[1]
        if seq > self.context_length:
            raise ConfigError(f"input_ids length {seq} exceeds text.context_length {self.context_length}")
        x = self.token_embedding(input_ids) + self.positional_embedding[:seq]
        if not layers:
            return x
        mask, is_causal = attention_mask_for(attention_mask, self.causal)
        for layer in layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, mask, is_causal, use_reentrant=False)
            else:
                x = layer(x, mask, is_causal)
        return x

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def lock(self, unlocked_layers: int = 0) -> None:
        """Freeze embeddings and all but the last ``unlocked_layers`` blocks (final norm unlocks with them)."""
        for p in self.parameters():
            p.requires_grad = False
        if unlocked_layers:
            for layer in list(self.layers)[-unlocked_layers:]:
                for p in layer.parameters():
                    p.requires_grad = True
            for p in self.ln_final.parameters():
                p.requires_grad = True


def read_hf_folder(path: str | Path) -> tuple[dict[str, Any], str]:
    """Return (model config dict, tokenizers JSON) of a local Hugging Face folder, offline."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"text.hf_path is not a directory: {path}")
    try:
        hf_cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise ConfigError(f"cannot read Hugging Face folder {path}: {exc}") from exc
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"{path}: only fast tokenizers (tokenizer.json) are supported")
    return hf_cfg.to_dict(), backend.to_str()


class HFTextTower(nn.Module):
    """Any Hugging Face encoder (BERT, PubMedBERT, MiniLM...) from a local folder or a stored config.

    With ``load_pretrained`` the weights come from ``hf_path``; otherwise the architecture is
    built from ``hf_config`` alone (a medvl checkpoint then supplies the weights), so loading a
    checkpoint never needs the original folder or the network.
    """

    def __init__(self, cfg: TextTowerConfig, load_pretrained: bool = True):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if cfg.pool not in POOLS:
            raise ConfigError(f"unknown text.pool {cfg.pool!r}; valid: {', '.join(POOLS)}")
        self.pool = cfg.pool
        if load_pretrained and cfg.hf_path:
            try:
                with quiet_transformers():
                    self.model = AutoModel.from_pretrained(cfg.hf_path, local_files_only=True,
                                                           add_pooling_layer=False)
            except TypeError:
                with quiet_transformers():
                    self.model = AutoModel.from_pretrained(cfg.hf_path, local_files_only=True)
            except Exception as exc:
                raise ConfigError(f"cannot load Hugging Face model from {cfg.hf_path}: {exc}") from exc
        elif cfg.hf_config:
            conf = dict(cfg.hf_config)
            model_type = conf.pop("model_type", None)
            if model_type is None:
                raise CheckpointError("text.hf_config has no model_type")
            hf_cfg = AutoConfig.for_model(model_type, **conf)
            try:
                self.model = AutoModel.from_config(hf_cfg, add_pooling_layer=False)
            except TypeError:
                self.model = AutoModel.from_config(hf_cfg)
        else:
            raise ConfigError("text.type 'hf' needs text.hf_path (a local Hugging Face folder)")
        self.model.eval()  # HF models are created in eval mode; CLIPModel.train() flips it
        self.width = int(self.model.config.hidden_size)
        max_pos = getattr(self.model.config, "max_position_embeddings", None)
        if max_pos is not None and cfg.context_length > max_pos:
            raise ConfigError(f"text.context_length {cfg.context_length} exceeds the HF model's "
                              f"max_position_embeddings ({max_pos})")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return pool_tokens(self.forward_tokens(input_ids, attention_mask), attention_mask, self.pool)

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token states ``[B, L, hidden]`` (the encoder's last hidden state)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def resize_vocab(self, vocab_size: int) -> None:
        if vocab_size > self.model.get_input_embeddings().num_embeddings:
            self.model.resize_token_embeddings(vocab_size)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.model.gradient_checkpointing_enable()
        else:
            self.model.gradient_checkpointing_disable()

    def lock(self, unlocked_layers: int = 0) -> None:
        """Freeze everything but the last ``unlocked_layers`` encoder layers (BERT-style ``encoder.layer``)."""
        for p in self.model.parameters():
            p.requires_grad = False
        if unlocked_layers:
            layers = _find_layer_list(self.model)
            if layers is None:
                raise ConfigError(f"cannot find the layer list of {type(self.model).__name__} to unlock")
            for layer in list(layers)[-unlocked_layers:]:
                for p in layer.parameters():
                    p.requires_grad = True


def _find_layer_list(model: nn.Module) -> nn.ModuleList | None:
    for path in ("encoder.layer", "encoder.layers", "layers", "transformer.layer", "h"):
        node: Any = model
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList):
            return node
    return None


TEXT_TOWERS: dict[str, type[nn.Module]] = {"transformer": TransformerTextTower, "hf": HFTextTower}


def build_text_tower(cfg: TextTowerConfig, load_pretrained: bool = True) -> nn.Module:
    """Build the tower named by ``cfg.type`` (one registration line per new tower family)."""
    if cfg.type not in TEXT_TOWERS:
        raise ConfigError(f"unknown text.type {cfg.type!r}; valid: {', '.join(sorted(TEXT_TOWERS))}")
    return TEXT_TOWERS[cfg.type](cfg, load_pretrained=load_pretrained)
