"""Description-enhanced training (DeViDe, ConceptCLIP, KAD): the dataset card's knowledge of
each class — its synonyms and descriptions — as extra positives during training.

Why: a from-scratch text tower sees each finding only in the phrasings of the training reports,
while zero-shot evaluation asks it about the card's prompts ("findings consistent with pleural
effusion", "fluid in the pleural space"). Training the image features against those same
prompts aligns the two, and the descriptions tie rare phrasings to common ones.

Per step, for every class ``c`` of the card, ``prompts_per_class`` prompts are drawn from
``card.prompts(c)`` (templates x name/synonyms/descriptions) and, for multilabel and single-class
binary cards, as many from ``card.prompts(c, negative=True)``; the text tower encodes them and
each set is averaged into one class embedding (the prompt ensemble zero-shot evaluation uses).
Then, with ``s`` the model's logit scale and cosines between normalised embeddings:

* multilabel (per class a present-vs-absent pair, as zero-shot scores it):
  ``CE([s cos(img, pos_c), s cos(img, neg_c)], label_c)`` averaged over known labels;
* multiclass / binary with both classes named: ``CE(s cos(img, pos_.), class)``.

The prompts are sampled with the global torch RNG, which the trainer checkpoints, so a resumed
run draws the same prompts. Contract: needs ``batch["labels"]`` [B, K] in the card's class order
(what the manifest dataset yields) and a dataset card.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvl.data.card import uses_prompt_pairs
from medvl.errors import ConfigError
from medvl.models.tokenizer import trim_padding
from medvl.objectives.context import ObjectiveContext, TrainingDataInfo
from medvl.objectives.infonce import contrastive_inputs


def description_loss(image: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None, labels: torch.Tensor,
                     scale: torch.Tensor | float, pairs: bool) -> torch.Tensor:
    """The loss of the module docstring; ``image`` [B, E], ``pos``/``neg`` [K, E] normalised, ``labels`` [B, K].

    Labels: 1 present, 0 absent, anything else (uncertain -1, NaN) ignored.
    """
    if pairs:
        if neg is None:
            raise ConfigError("description loss with prompt pairs needs negative-prompt embeddings")
        logits = torch.stack([image @ pos.T, image @ neg.T], dim=-1) * scale        # [B, K, 2]
        known = (labels == 0) | (labels == 1)
        if not known.any():
            return logits.sum() * 0.0
        target = (labels[known] == 0).long()                                         # 0 = present
        return F.cross_entropy(logits[known], target)
    logits = scale * image @ pos.T
    positive = labels == 1
    rows = positive.sum(dim=1) == 1
    if not rows.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[rows], positive[rows].float().argmax(dim=1))


class DescriptionLoss(nn.Module):
    """Card descriptions and synonyms as positives (see the module docstring)."""

    needs_model = True

    def __init__(self, prompts_per_class: int = 4):
        super().__init__()
        if int(prompts_per_class) < 1:
            raise ConfigError(f"objective 'describe': prompts_per_class must be >= 1, got {prompts_per_class}")
        self.prompts_per_class = int(prompts_per_class)
        self.positive: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.negative: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.pairs = False

    def bind(self, model: nn.Module, data: TrainingDataInfo | None = None) -> None:
        """Read every class's positive (and negative) prompts from the card."""
        if data is None or data.card is None or not data.classes:
            raise ConfigError("objective 'describe' needs a dataset card (card.yaml beside the manifest) with "
                              "the classes' synonyms/descriptions; sharded training data has none")
        card = data.card
        self.pairs = uses_prompt_pairs(data.task, len(data.classes))
        positive = [card.prompts(c) for c in data.classes]
        negative = [card.prompts(c, negative=True) for c in data.classes] if self.pairs else []
        empty = [c for c, p in zip(data.classes, positive, strict=True) if not p]
        empty += [f"{c} (negative)" for c, p in zip(data.classes, negative, strict=False) if not p]
        if empty:
            raise ConfigError(f"objective 'describe': the card has no prompts for {', '.join(empty)}")
        self.positive = self._tokenize(model, positive)
        self.negative = self._tokenize(model, negative)

    def _tokenize(self, model: nn.Module, sets: list[list[str]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Tokenize every prompt once at bind time: per class (input_ids, attention_mask)."""
        out = []
        for prompts in sets:
            tok = model.tokenizer(prompts)
            out.append((tok["input_ids"], tok["attention_mask"]))
        return out

    def _class_embeddings(self, model: nn.Module, sets: list[tuple[torch.Tensor, torch.Tensor]],
                          device: torch.device) -> torch.Tensor:
        """Encode ``prompts_per_class`` sampled prompts per class (with replacement when a class has
        fewer) and average each class's embeddings: ``[K, E]`` normalised."""
        k = self.prompts_per_class
        ids, masks = [], []
        for class_ids, class_mask in sets:
            n = class_ids.shape[0]
            idx = torch.randint(n, (k,)) if n < k else torch.randperm(n)[:k]
            ids.append(class_ids[idx])
            masks.append(class_mask[idx])
        input_ids, attention_mask = trim_padding(torch.cat(ids), torch.cat(masks))
        emb = model.encode_text(input_ids.to(device), attention_mask.to(device)).float()
        emb = F.normalize(emb, dim=-1)
        return F.normalize(emb.reshape(len(sets), k, -1).mean(dim=1), dim=-1)

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any] | None = None,
                context: ObjectiveContext | None = None) -> dict[str, torch.Tensor]:
        if context is None or not self.positive:
            raise ConfigError("objective 'describe' must be bound to a model and card (the trainer calls bind)")
        if batch is None or batch.get("labels") is None:
            raise ConfigError("objective 'describe' needs batch['labels'] [B, K]")
        img, _, scale = contrastive_inputs(outputs, "describe")
        labels = torch.as_tensor(batch["labels"], device=img.device).float()
        if labels.ndim != 2 or labels.shape[1] != len(self.positive):
            raise ConfigError(f"objective 'describe': batch['labels'] has shape {tuple(labels.shape)}, expected "
                              f"[B, {len(self.positive)}] (one column per card class)")
        pos = self._class_embeddings(context.model, self.positive, img.device)
        neg = self._class_embeddings(context.model, self.negative, img.device) if self.pairs else None
        return {"loss": description_loss(img, pos, neg, labels, scale, self.pairs)}
