"""Text tokenisation for the text towers, built on Hugging Face ``tokenizers``.

Why a wrapper: the model needs fixed-size ``input_ids``/``attention_mask`` LongTensors and the
tokenizer must travel inside the checkpoint's ``config.yaml`` (as the ``tokenizers`` JSON), so a
checkpoint rebuilds it without any vocabulary file. The same wrapper serves the from-scratch
tokenizer (trained on the training reports by :func:`train_tokenizer`) and the ``tokenizer.json``
of a Hugging Face folder.

Special tokens of a trained tokenizer: ``[PAD]`` (id 0), ``[UNK]``, ``[CLS]`` (start, pooled by
``pool: cls``) and ``[SEP]`` (end of text, pooled by ``pool: eot``); every sequence is
``[CLS] ... [SEP]`` and truncation keeps ``[SEP]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from medvl.errors import ConfigError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TOKENIZER_TYPES = ("bpe", "wordpiece")


class Tokenizer:
    """Callable ``texts -> {"input_ids", "attention_mask"}`` (LongTensor [B, context_length])."""

    trained = True

    def __init__(self, backend: HFTokenizer, context_length: int):
        self.backend = backend
        self.context_length = int(context_length)
        self.pad_id = self._find_pad_id()
        # Fixed-length output keeps batches stackable and matches the contract (padded to L).
        self.backend.enable_truncation(max_length=self.context_length)
        pad_token = self.backend.id_to_token(self.pad_id) or "[PAD]"
        self.backend.enable_padding(pad_id=self.pad_id, pad_token=pad_token, length=self.context_length)

    def _find_pad_id(self) -> int:
        for tok in ("[PAD]", "<pad>", "<|endoftext|>"):
            idx = self.backend.token_to_id(tok)
            if idx is not None:
                return idx
        return 0

    @property
    def special_ids(self) -> list[int]:
        """Ids of the special tokens ([PAD], [CLS], [SEP], [MASK], ...): not words of the report."""
        ids = {self.pad_id}
        for tok in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>", "<pad>", "<mask>",
                    "<|startoftext|>", "<|endoftext|>"):
            idx = self.backend.token_to_id(tok)
            if idx is not None:
                ids.add(int(idx))
        return sorted(ids)

    @property
    def mask_id(self) -> int | None:
        """Id of the mask token used by masked language modelling (None if the vocabulary has none)."""
        for tok in ("[MASK]", "<mask>"):
            idx = self.backend.token_to_id(tok)
            if idx is not None:
                return int(idx)
        return None

    @property
    def vocab_size(self) -> int:
        """Number of ids the embedding table must cover (special and added tokens included)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __call__(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        encodings = self.backend.encode_batch([str(t) for t in texts])
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return {"input_ids": ids.reshape(len(encodings), self.context_length),
                "attention_mask": mask.reshape(len(encodings), self.context_length)}

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=True)

    def to_json(self) -> str:
        """The ``tokenizers`` JSON (without padding/truncation, which come from ``context_length``)."""
        clone = HFTokenizer.from_str(self.backend.to_str())
        clone.no_padding()
        clone.no_truncation()
        return clone.to_str()

    @classmethod
    def from_json(cls, text: str, context_length: int) -> Tokenizer:
        try:
            backend = HFTokenizer.from_str(text)
        except Exception as exc:  # tokenizers raises a plain Exception on bad JSON
            raise ConfigError(f"text.tokenizer is not a valid tokenizers JSON: {exc}") from exc
        return cls(backend, context_length)

    @classmethod
    def from_file(cls, path: str, context_length: int) -> Tokenizer:
        return cls(HFTokenizer.from_file(str(path)), context_length)


class UntrainedTokenizer:
    """Placeholder until the trainer trains one; calling it explains the required order."""

    trained = False
    vocab_size = 0

    def __init__(self, context_length: int):
        self.context_length = context_length

    def __call__(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        raise ConfigError(
            "this model's tokenizer is not trained yet: call "
            "model.set_tokenizer(medvl.models.tokenizer.train_tokenizer(train_texts, vocab_size)) "
            "or create_model(..., tokenizer_texts=train_texts) before tokenising (and before building "
            "the optimizer, since it resizes the token embedding)"
        )

    def to_json(self) -> None:
        return None


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    *,
    kind: str = "bpe",
    context_length: int = 64,
    min_frequency: int = 1,
) -> Tokenizer:
    """Train a lowercase WordPiece or BPE tokenizer on report texts.

    Medical vocabulary ("pneumothorax", "cardiomegaly") is split badly by generic vocabularies,
    so a small tokenizer trained on the training reports is the default for from-scratch towers.
    ``kind="bpe"`` (default) is deterministic: every DDP rank training on the same texts gets the
    same vocabulary. ``kind="wordpiece"`` is not, because of an upstream tie-breaking bug
    (huggingface/tokenizers#1794): train it on one rank and share the JSON. ``vocab_size`` is an
    upper bound (small corpora give fewer tokens).
    """
    if kind not in TOKENIZER_TYPES:
        raise ConfigError(f"unknown tokenizer type {kind!r}; valid: {', '.join(TOKENIZER_TYPES)}")
    texts = [str(t) for t in texts if t is not None]
    if not any(t.strip() for t in texts):
        raise ConfigError("cannot train a tokenizer: no non-empty texts were given")
    if kind == "wordpiece":
        backend = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=SPECIAL_TOKENS, show_progress=False)
        backend.decoder = decoders.WordPiece()
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    else:
        # No continuing-subword prefix / end-of-word suffix: those are what make the upstream
        # trainer non-deterministic; word starts are marked by Metaspace's "▁" instead.
        backend = HFTokenizer(models.BPE(unk_token="[UNK]"))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=SPECIAL_TOKENS, show_progress=False)
        backend.decoder = decoders.Metaspace()
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Metaspace()])
    backend.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    backend.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return Tokenizer(backend, context_length)


def trim_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the trailing token columns that are padding in every row of the batch.

    The tokenizer pads to the full context length; a batch of short captions would otherwise pay
    for attention and MLPs over pad positions. Exact: pads are masked out as attention keys and
    never pooled, so the features are unchanged (up to float summation order).
    """
    used = attention_mask.bool().any(dim=0).nonzero()
    length = int(used.max()) + 1 if used.numel() else 1
    if length < input_ids.shape[1]:
        return input_ids[:, :length], attention_mask[:, :length]
    return input_ids, attention_mask
