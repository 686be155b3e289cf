"""A tiny randomly initialised GPT-2 or Llama (2 layers, width 64) with a byte-level BPE tokenizer trained
on the given texts, saved as a Hugging Face folder: what ``hf-lm:<dir>`` points at in tests and in
benchmarks/generation_speed.py. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path


def make_tiny_lm(folder: Path, texts: list[str], vocab_size: int = 400, seed: int = 0,
                 with_tokenizer: bool = True, arch: str = "gpt2") -> Path:
    """``arch``: ``gpt2`` (learned positions) or ``llama`` (rotary positions, SwiGLU; 2 layers, width 64)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    tok = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                            unk_token="<|endoftext|>")
    torch.manual_seed(seed)
    if arch == "llama":
        lcfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                           bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
        LlamaForCausalLM(lcfg).save_pretrained(str(folder))
    else:
        cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=64, n_layer=2, n_head=2,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
        GPT2LMHeadModel(cfg).save_pretrained(str(folder))
    if with_tokenizer:
        tok.save_pretrained(str(folder))
    return folder
