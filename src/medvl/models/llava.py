"""LLaVA-style adapter: a frozen medvl image encoder, a projector (linear or 2-layer MLP) and a
causal language model from a local Hugging Face folder (``hf-lm:<dir>``), trained in two stages.

Why: most published medical VLMs (LLaVA-Med, XrayGPT, PA-LLaVA, MedGemma) are this recipe; with
it a medvl encoder becomes a report writer / question answerer on top of any local LM, without
medvl owning the LM. Stage 1 (``stage=1``) trains only the projector (feature alignment);
stage 2 trains the projector plus LoRA adapters on the LM (``peft``; visual instruction tuning).
The image encoder is always frozen.

Prompt: the tokenizer's own chat template when it has one (an instruction-tuned LM), else the
LLaVA-v1 plain template ``"USER: <image>\\n{instruction}\\nASSISTANT: {answer}<eos>"``. The image
tokens (the encoder's projected patch features, or the pooled feature for encoders without
patch tokens) replace ``<image>``; the loss covers the answer tokens only.

On disk (``save``/:func:`load_llava`): ``llava.yaml`` (encoder spec, LM folder, projector kind,
stage, LoRA settings, template), ``projector.safetensors`` and, after stage 2, ``lora/`` (peft's
safetensors adapter). The LM and the encoder stay where they are and are referenced by path.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvl.errors import CheckpointError, ConfigError
from medvl.generate.decoding import DecodeConfig, Generation, decode

IMAGE_PLACEHOLDER = "<image>"
PLAIN_TEMPLATE = "USER: <image>\n{instruction}\nASSISTANT:"
REPORT_INSTRUCTION = "Write the findings and impression of this radiograph."
PROJECTORS = ("linear", "mlp")
CONFIG_NAME = "llava.yaml"


@dataclass
class LlavaConfig:
    """What rebuilds a :class:`LlavaModel` (paths are the user's: nothing is copied)."""

    encoder: str
    lm: str  # "hf-lm:<dir>" or a plain folder
    projector: str = "mlp"
    stage: int = 1
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=list)  # empty: peft's default for the architecture
    max_answer_tokens: int = 128

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lm_folder(spec: str | Path) -> Path:
    """``hf-lm:<dir>`` (or a plain path) -> the folder; one-line errors for a missing config/tokenizer."""
    text = str(spec)
    folder = Path(text[len("hf-lm:"):] if text.startswith("hf-lm:") else text)
    if not folder.is_dir():
        raise ConfigError(f"language model folder not found: {folder} (expected hf-lm:<local folder>)")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder}: no config.json; not a Hugging Face model folder")
    tokenizer_files = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
    if not any((folder / f).is_file() for f in tokenizer_files):
        raise ConfigError(f"{folder}: the language model has no tokenizer (none of {', '.join(tokenizer_files)}); "
                          f"save it with tokenizer.save_pretrained('{folder}')")
    return folder


def load_lm(spec: str | Path) -> tuple[Any, Any]:
    """``(AutoModelForCausalLM, AutoTokenizer)`` from a local folder, offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medvl.models.text_towers import quiet_transformers

    folder = lm_folder(spec)
    with quiet_transformers():
        try:
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:  # transformers raises OSError/ValueError/KeyError for broken tokenizers
            raise ConfigError(f"{folder}: cannot load the tokenizer: {str(exc).splitlines()[0]}") from exc
        try:
            lm = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:
            raise ConfigError(f"{folder}: cannot load a causal LM: {str(exc).splitlines()[0]}") from exc
    if tok.eos_token_id is None:
        raise ConfigError(f"{folder}: the tokenizer has no end-of-sequence token; answers could never end")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return lm, tok


def _projector(kind: str, dim_in: int, dim_out: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(dim_in, dim_out)
    if kind == "mlp":  # LLaVA-1.5's mlp2x_gelu
        return nn.Sequential(nn.Linear(dim_in, dim_out), nn.GELU(), nn.Linear(dim_out, dim_out))
    raise ConfigError(f"unknown projector {kind!r}; valid: {', '.join(PROJECTORS)}")


class LlavaModel(nn.Module):
    """Encoder (frozen) -> projector -> image tokens spliced into the LM's prompt embeddings."""

    def __init__(self, cfg: LlavaConfig, encoder: Any, lm: nn.Module, tokenizer: Any):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.lm = lm
        dim = self._image_tokens(torch.zeros(1, self.in_chans, self.image_size, self.image_size)).shape[-1]
        self.projector = _projector(cfg.projector, int(dim), int(lm.get_input_embeddings().embedding_dim))
        for p in self.lm.parameters():
            p.requires_grad_(False)

    # -- images ----------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.encoder.image_size)

    @property
    def in_chans(self) -> int:
        return int(self.encoder.in_chans)

    @property
    def device(self) -> torch.device:
        return next(self.projector.parameters()).device if hasattr(self, "projector") else torch.device("cpu")

    @torch.no_grad()
    def _image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` frozen image features: a medvl dual encoder's patch tokens (+ pooled), else pooled."""
        model = getattr(self.encoder, "model", None)
        if model is not None and hasattr(model, "encode_image_tokens"):
            model.eval()
            pooled, patches, _ = model.encode_image_tokens(images.to(next(model.parameters()).device))
            return torch.cat([pooled.unsqueeze(1), patches], dim=1).float()
        return self.encoder.encode_image(images, normalize=False).float().unsqueeze(1)

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self._image_tokens(images).to(self.device))

    # -- prompts ---------------------------------------------------------------------------
    def prompt_parts(self, instruction: str) -> tuple[str, str]:
        """Text before and after the image tokens for one instruction (chat template if the LM has one)."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{instruction}"}],
                                           tokenize=False, add_generation_prompt=True)
        else:
            text = PLAIN_TEMPLATE.format(instruction=instruction)
        before, sep, after = text.partition(IMAGE_PLACEHOLDER)
        if not sep:
            raise ConfigError("the chat template dropped the <image> placeholder; cannot place the image tokens")
        return before, after

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _embed(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        t = ids if torch.is_tensor(ids) else torch.tensor(ids, dtype=torch.long)
        return self.lm.get_input_embeddings()(t.to(self.device))

    def build_inputs(self, images: torch.Tensor, instructions: list[str], answers: list[str] | None = None
                     ) -> dict[str, torch.Tensor]:
        """Right-padded ``inputs_embeds``, ``attention_mask`` and ``labels`` (-100 except answer tokens)."""
        img = self.image_embeds(images)
        eos = int(self.tokenizer.eos_token_id)
        seqs, labels = [], []
        for i, instruction in enumerate(instructions):
            before, after = self.prompt_parts(instruction)
            b, a = self._ids(before), self._ids(after)
            ans = [] if answers is None else self._ids(" " + answers[i].strip())[: self.cfg.max_answer_tokens] + [eos]
            emb = torch.cat([self._embed(b), img[i], self._embed(a + ans)]) if b else \
                torch.cat([img[i], self._embed(a + ans)])
            seqs.append(emb)
            labels.append([-100] * (len(b) + img.shape[1] + len(a)) + ans)
        width = max(s.shape[0] for s in seqs)
        dim = seqs[0].shape[1]
        embeds = torch.zeros(len(seqs), width, dim, device=self.device, dtype=seqs[0].dtype)
        mask = torch.zeros(len(seqs), width, dtype=torch.long, device=self.device)
        lab = torch.full((len(seqs), width), -100, dtype=torch.long, device=self.device)
        for i, s in enumerate(seqs):
            embeds[i, : s.shape[0]] = s
            mask[i, : s.shape[0]] = 1
            lab[i, : len(labels[i])] = torch.tensor(labels[i], device=self.device)
        return {"inputs_embeds": embeds, "attention_mask": mask, "labels": lab}

    def loss(self, images: torch.Tensor, instructions: list[str], answers: list[str]) -> torch.Tensor:
        """Next-token cross-entropy on the answer tokens."""
        inputs = self.build_inputs(images, instructions, answers)
        out = self.lm(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"])
        logits = out.logits[:, :-1].float()
        target = inputs["labels"][:, 1:]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)

    # -- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, images: torch.Tensor, cfg: DecodeConfig | None = None,
                 instructions: list[str] | None = None, cache: bool = True) -> list[Generation]:
        """Answers (reports by default) with medvl's decoding loops; ``cache`` keeps the LM's key/value
        cache across steps (:class:`medvl.generate.hf_step.CachedCausalLM`), else every step re-runs
        the whole sequence (same tokens, slower; kept as the reference the tests compare against)."""
        cfg = (cfg or DecodeConfig()).validate()
        instructions = instructions or [REPORT_INSTRUCTION] * images.shape[0]
        prompt = self.build_inputs(images, instructions)
        lengths = prompt["attention_mask"].sum(1)
        emb_table = self.lm.get_input_embeddings()
        eos = int(self.tokenizer.eos_token_id)
        if cache:
            from medvl.generate.hf_step import CachedCausalLM

            step = CachedCausalLM(self.lm, [prompt["inputs_embeds"][r, : lengths[r]] for r in range(len(lengths))])
            return decode(step, images.shape[0], eos, eos, cfg, self.device)

        def fn(ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            gen = emb_table(ids[:, 1:].to(self.device))  # drop the placeholder start token
            parts = [torch.cat([prompt["inputs_embeds"][r, : lengths[r]], gen[j]]) for j, r in enumerate(rows.tolist())]
            width = max(p.shape[0] for p in parts)
            embeds = torch.zeros(len(parts), width, parts[0].shape[1], device=self.device, dtype=parts[0].dtype)
            mask = torch.zeros(len(parts), width, dtype=torch.long, device=self.device)
            for j, p in enumerate(parts):  # left padding: the last position is every row's next token
                embeds[j, width - p.shape[0]:] = p
                mask[j, width - p.shape[0]:] = 1
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            return self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).logits[:, -1]

        return decode(fn, images.shape[0], eos, eos, cfg, self.device)

    def decode_tokens(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True)).strip()

    def check_config(self, cfg: DecodeConfig) -> DecodeConfig:
        cfg.validate()
        limit = getattr(self.lm.config, "n_positions", None) or getattr(self.lm.config, "max_position_embeddings", None)
        if limit and cfg.max_new_tokens >= int(limit):
            raise ConfigError(f"max_new_tokens={cfg.max_new_tokens} exceeds the LM's {limit} positions")
        return cfg

    # -- stages ----------------------------------------------------------------------------
    def set_stage(self, stage: int) -> None:
        """1: projector only; 2: projector + LoRA on the LM (wraps the LM with peft once)."""
        if stage not in (1, 2):
            raise ConfigError(f"LLaVA stage must be 1 (projector) or 2 (projector + LoRA), got {stage}")
        self.cfg.stage = stage
        if stage == 2 and not hasattr(self.lm, "peft_config"):
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(r=self.cfg.lora_r, lora_alpha=self.cfg.lora_alpha, lora_dropout=self.cfg.lora_dropout,
                              target_modules=self.cfg.lora_targets or None, task_type="CAUSAL_LM")
            try:
                self.lm = get_peft_model(self.lm, lora)
            except ValueError as exc:
                raise ConfigError(f"LoRA cannot wrap this LM: {exc}; set lora_targets to its linear layer "
                                  f"names") from exc

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        from medvl.config import save_yaml

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.projector.state_dict().items()},
                  str(directory / "projector.safetensors"))
        if hasattr(self.lm, "peft_config"):
            self.lm.save_pretrained(str(directory / "lora"))
        save_yaml(self.cfg.to_dict(), directory / CONFIG_NAME)
        return directory


def build_llava(encoder: str, lm: str, projector: str = "mlp", device: str = "cpu", **kw: Any) -> LlavaModel:
    """A fresh adapter: the encoder spec (medvl checkpoint, ``biomedclip``, ``timm:...``) + ``hf-lm:<dir>``."""
    from medvl.models.encoder import load_encoder

    cfg = LlavaConfig(encoder=str(encoder), lm=str(lm), projector=projector, **kw)
    lm_model, tok = load_lm(lm)
    return LlavaModel(cfg, load_encoder(encoder, device=device), lm_model.to(device), tok).to(device)


def is_llava_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def load_llava(directory: str | Path, device: str = "cpu") -> LlavaModel:
    """Rebuild a trained adapter from :meth:`LlavaModel.save`'s directory."""
    from safetensors.torch import load_file

    from medvl.config import from_dict, load_yaml

    directory = Path(directory)
    if not is_llava_dir(directory):
        raise CheckpointError(f"{directory}: no {CONFIG_NAME} (not a LLaVA adapter directory)")
    cfg = from_dict(LlavaConfig, load_yaml(directory / CONFIG_NAME))
    model = build_llava(cfg.encoder, cfg.lm, cfg.projector, device, **{k: v for k, v in cfg.to_dict().items()
                                                                      if k not in ("encoder", "lm", "projector")})
    try:
        model.projector.load_state_dict(load_file(str(directory / "projector.safetensors")), strict=True)
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"{directory / 'projector.safetensors'}: {str(exc).splitlines()[0]}") from exc
    if cfg.stage == 2:
        from peft import PeftModel

        if not (directory / "lora").is_dir():
            raise CheckpointError(f"{directory}: stage 2 adapter without its lora/ folder")
        model.lm = PeftModel.from_pretrained(model.lm, str(directory / "lora"))
    return model.eval()


@dataclass
class LlavaTrainResult:
    out_dir: Path
    losses: list[float]
    seconds: float
    trainable: int


def train_llava(model: LlavaModel, manifest: Any, out_dir: str | Path, *, stage: int = 1, steps: int = 100,
                lr: float = 1e-3, batch_size: int = 8, split: str = "train", seed: int = 0,
                instruction: str = REPORT_INSTRUCTION, log: Any = None) -> LlavaTrainResult:
    """Train one stage on image-report pairs (``text``) or VQA rows (``question``/``answer`` columns).

    Rows with an empty target are refused with their row number (never silently skipped).
    """
    from medvl.data.manifest import Manifest, load_manifest
    from medvl.errors import ManifestError
    from medvl.generate.reports import image_batches

    torch.manual_seed(seed)
    manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    samples = [s for s in manifest.samples if s.split == split]
    if not samples:
        raise ManifestError(f"{manifest.path}: no rows in split {split!r}")
    pairs: dict[str, tuple[str, str]] = {}
    for s in samples:
        question = str(s.extra.get("question") or "").strip()
        target = str(s.extra.get("answer") or "").strip() if question else s.text.strip()
        if not target:
            raise ManifestError(f"{manifest.path}, row {s.row}: empty {'answer' if question else 'report'}; the "
                                f"LLaVA adapter needs a target text for every training row")
        pairs[str(s.row)] = (question or instruction, target)
    model.set_stage(stage)
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    rows = [str(s.row) for s in samples]
    by_row = {str(s.row): s for s in samples}
    gen = torch.Generator().manual_seed(seed)
    while len(losses) < steps:
        order = [rows[i] for i in torch.randperm(len(rows), generator=gen).tolist()]
        for start in range(0, len(order), batch_size):
            chunk = [by_row[r] for r in order[start:start + batch_size]]
            for _, images in image_batches(manifest, chunk, model.image_size, model.in_chans, len(chunk)):
                keys = [str(s.row) for s in chunk]
                loss = model.loss(images, [pairs[k][0] for k in keys], [pairs[k][1] for k in keys])
                if not math.isfinite(float(loss.detach())):
                    raise ConfigError(f"LLaVA stage {stage} diverged at step {len(losses) + 1} (loss {float(loss)})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                if log is not None and (len(losses) % 10 == 0 or len(losses) == steps):
                    log(f"stage {stage} step {len(losses)}/{steps} loss {losses[-1]:.4f}")
            if len(losses) >= steps:
                break
    model.eval()
    out = model.save(out_dir)
    return LlavaTrainResult(out, losses, time.perf_counter() - t0, sum(p.numel() for p in params))
