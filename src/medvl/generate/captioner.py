"""A trained report writer: the dual encoder of a checkpoint plus the caption decoder its
``caption`` objective trained, rebuilt for generation.

Why the decoder is read from the training state: it belongs to the objective (the dual encoder
and every evaluator stay unchanged), so the trainer saves it with the other objective state in
``train_state.pt`` (read with ``weights_only=True``) and the objective's options in
``train_config.yaml``. :func:`load_captioner` rebuilds the objective from those options, binds
it to the model (which sizes the decoder exactly as in training) and loads its weights strictly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medvl.errors import CheckpointError, ConfigError
from medvl.generate.decoding import DecodeConfig, Generation, decode
from medvl.models.caption_decoder import CaptionDecoder, image_memory


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its newest complete checkpoint)."""
    from medvl.train import checkpoint as ck

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if (path / "weights.safetensors").is_file():
        return path
    latest = ck.latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"{path}: neither a checkpoint (no weights.safetensors) nor a run directory with "
                              f"complete checkpoints")
    return latest


def _caption_spec(ckpt: Path) -> tuple[str, dict[str, Any]]:
    from medvl.train import checkpoint as ck

    if not (ckpt / ck.TRAIN_CONFIG).is_file():
        raise CheckpointError(f"{ckpt}: no {ck.TRAIN_CONFIG}; a report writer needs a checkpoint written by "
                              f"`medvl train` with the 'caption' objective")
    specs = ck.load_train_config_dict(ckpt).get("objectives") or []
    if isinstance(specs, (str, dict)):
        specs = [specs]
    seen: dict[str, int] = {}
    for spec in specs:
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        name = spec.get("name")
        seen[name] = seen.get(name, 0) + 1
        if name == "caption":
            key = "caption" if seen[name] == 1 else f"caption_{seen[name]}"
            spec.pop("name")
            spec.pop("weight", None)
            return key, spec
    names = ", ".join(str(s.get("name") if isinstance(s, dict) else s) for s in specs) or "(none)"
    raise CheckpointError(f"{ckpt} was trained without the 'caption' objective (objectives: {names}); add "
                          f"{{name: caption}} to the config's objectives to train a report writer")


@dataclass
class Captioner:
    """Dual encoder + caption decoder; :meth:`generate` turns ``[B, C, H, W]`` images in [0, 1] into reports."""

    model: Any  # medvl.models.CLIPModel
    decoder: CaptionDecoder
    name: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @property
    def image_size(self) -> int:
        return int(self.model.cfg.image.image_size)

    @property
    def in_chans(self) -> int:
        return int(self.model.cfg.image.in_chans)

    @property
    def volume_policy(self) -> Any:
        """The checkpoint's volume policy (training config ``data.volume``), or None: map volumes as in training."""
        from medvl.data.volume_preprocess import as_volume_policy

        return as_volume_policy(getattr(self.model.cfg.image, "volume", None))

    def check_config(self, cfg: DecodeConfig) -> DecodeConfig:
        """Refuse a generation length the decoder cannot hold (its position table is the context)."""
        cfg.validate()
        room = self.decoder.cfg.context_length - 1
        if cfg.max_new_tokens > room:
            raise ConfigError(f"max_new_tokens={cfg.max_new_tokens} is longer than this decoder can write "
                              f"(context length {self.decoder.cfg.context_length}: at most {room} new tokens)")
        return cfg

    @torch.no_grad()
    def generate(self, images: torch.Tensor, cfg: DecodeConfig | None = None) -> list[Generation]:
        cfg = self.check_config(cfg or DecodeConfig())
        images = images.to(self.device)
        memory = self.decoder.project_memory(image_memory(self.model, images))

        def logits_fn(ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return self.decoder(ids, memory[rows], projected=True)[:, -1]

        d = self.decoder.cfg
        return decode(logits_fn, images.shape[0], d.bos_id, d.eos_id, cfg, self.device)

    def decode_tokens(self, tokens: list[int]) -> str:
        """Token ids -> text; the from-scratch tokenizer splits punctuation off, so re-attach it."""
        text = re.sub(r"\s+([.,:;!?)%])", r"\1", self.model.tokenizer.decode(tokens))
        text = re.sub(r"([(])\s+", r"\1", text)
        return re.sub(r"(\w) - (?=\w)", r"\1-", text).strip()  # "51 - year - old" -> "51-year-old"


def attach_caption_decoder(model: Any, path: str | Path, device: str | torch.device = "cpu") -> Captioner:
    """A :class:`Captioner` around an already loaded dual encoder and the decoder saved in ``path``.

    The server uses this to reuse the model it serves instead of loading the weights twice.
    """
    from medvl.objectives.caption import CaptionLoss
    from medvl.train import checkpoint as ck

    ckpt = resolve_checkpoint(path)
    key, spec = _caption_spec(ckpt)
    try:
        objective = CaptionLoss(**spec)
    except TypeError as exc:
        raise CheckpointError(f"{ckpt / ck.TRAIN_CONFIG}: bad options for the caption objective: {exc}") from exc
    objective.bind(model)
    state = ck.load_train_state(ckpt).get("objective") or {}
    prefix = f"losses.{key}.decoder."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise CheckpointError(f"{ckpt / ck.TRAIN_STATE} holds no caption decoder weights ({prefix}*)")
    assert objective.decoder is not None
    try:
        objective.decoder.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt / ck.TRAIN_STATE}: caption decoder weights do not match its config: "
                              f"{str(exc).splitlines()[0]}") from exc
    return Captioner(model=model.eval(), decoder=objective.decoder.to(device).eval(), name=str(path))


def load_captioner(path: str | Path, device: str | torch.device = "cpu") -> Captioner:
    """The report writer of a checkpoint (or of a run directory's newest checkpoint)."""
    from medvl.models import load_model

    ckpt = resolve_checkpoint(path)
    _caption_spec(ckpt)  # fail before loading weights when there is no caption decoder
    return attach_caption_decoder(load_model(ckpt, device=device), ckpt, device)


def report_writer_for(encoder: Any) -> Captioner | None:
    """The caption decoder of the checkpoint an encoder was loaded from, or None if it has none.

    Used by the server: a medvl checkpoint trained with the ``caption`` objective also serves
    ``POST /v1/report``; any other encoder simply has no report writer.
    """
    model = getattr(encoder, "model", None)
    name = str(getattr(encoder, "name", ""))
    if model is None or not hasattr(model, "encode_image_tokens") or not Path(name).is_dir():
        return None
    try:
        return attach_caption_decoder(model, name, getattr(encoder, "device", "cpu"))
    except CheckpointError:
        return None
