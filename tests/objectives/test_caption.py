"""The ``caption`` objective (CoCa's next-token loss): it learns the phantom reports in a few
steps, trains alone or with infonce from one config, and a crashed run resumes bit for bit
(decoder weights and its optimizer state are part of the checkpoint)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from medvl.data.synthetic import generate_phantoms
from medvl.errors import ConfigError
from medvl.models import create_model, load_model
from medvl.models.caption_decoder import CaptionDecoder, DecoderConfig
from medvl.objectives import CaptionLoss, ObjectiveContext, build_objective
from medvl.train import checkpoint as ck
from medvl.train.config import build_train_config
from medvl.train.trainer import train

TINY = {"embed_dim": 32, "image": {"kwargs": {"output_stride": 8}},
        "text": {"width": 32, "layers": 1, "heads": 2, "context_length": 64, "vocab_size": 300}}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_phantoms(tmp_path_factory.mktemp("ph"), n=48, size=32, seed=0)


def caption_config(manifest: Path, out: Path, objectives: list, steps: int = 6, lr: float = 3e-3,
                   **train_kw: object):
    cfg = {
        "data": {"manifest": str(manifest), "image_size": 32, "channels": 1},
        "model": {"name": "clip-tiny", "overrides": TINY},
        "objectives": objectives,
        "optim": {"lr": lr, "warmup_steps": 1, "weight_decay": 0.0},
        "train": {"max_steps": steps, "batch_size": 16, "seed": 0, "device": "cpu", "ckpt_every": 2,
                  "log_every": 1, "out_dir": str(out), "threads": 1, "progress": False, "tensorboard": False,
                  **train_kw},
    }
    return build_train_config(cfg)


def _column(run: Path, name: str) -> list[float]:
    with (run / "metrics.csv").open() as f:
        return [float(r[name]) for r in csv.DictReader(f) if r.get(name)]


def test_decoder_is_causal_and_masks_padding() -> None:
    torch.manual_seed(0)
    dec = CaptionDecoder(DecoderConfig(vocab_size=11, memory_dim=8, bos_id=1, eos_id=2, width=16, heads=2,
                                       context_length=8)).eval()
    ids = torch.randint(3, 11, (2, 6))
    mem = torch.randn(2, 5, 8)
    full = dec(ids, mem)
    changed = ids.clone()
    changed[:, 4:] = 3
    part = dec(changed, mem)
    assert torch.allclose(full[:, :4], part[:, :4], atol=1e-5)  # no peeking at later tokens
    assert not torch.allclose(full[:, 4:], part[:, 4:], atol=1e-5)
    other = dec(ids, torch.randn(2, 5, 8))
    assert not torch.allclose(full, other)  # the image matters
    with pytest.raises(ConfigError, match="context length"):
        dec(torch.ones(1, 9, dtype=torch.long), mem[:1])


@pytest.mark.slow
def test_caption_alone_learns_reports_and_combined_config(phantoms: Path, tmp_path: Path) -> None:
    res = train(caption_config(phantoms, tmp_path / "cap", [{"name": "caption", "layers": 1}], steps=20,
                               lr=1e-2, ckpt_every=20))
    losses = _column(tmp_path / "cap", "caption")
    assert len(losses) == 20
    assert losses[-1] < 0.7 * losses[0], losses  # a few steps already learn the report template
    assert res.last_checkpoint is not None
    both = train(caption_config(phantoms, tmp_path / "both", [{"name": "infonce"}, {"name": "caption"}], steps=3))
    header = (both.out_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"infonce", "caption", "caption.accuracy"} <= set(header)


def test_caption_resumes_exactly(phantoms: Path, tmp_path: Path) -> None:
    objectives = [{"name": "infonce"}, {"name": "caption", "weight": 0.5, "layers": 1}]
    full = train(caption_config(phantoms, tmp_path / "full", objectives))

    class Crash(RuntimeError):
        pass

    def crash(step: int, batch: dict) -> None:
        if step == 5:
            raise Crash("killed")

    cfg = caption_config(phantoms, tmp_path / "crashed", objectives)
    with pytest.raises(Crash):
        train(cfg, batch_hook=crash)
    resumed = train(cfg, resume=True)
    assert resumed.step == full.step == 6
    a, b = load_model(full.out_dir / "last"), load_model(resumed.out_dir / "last")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    sa = ck.load_train_state(ck.latest_checkpoint(full.out_dir))["objective"]
    sb = ck.load_train_state(ck.latest_checkpoint(resumed.out_dir))["objective"]
    assert any(k.startswith("losses.caption.decoder.") for k in sa)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_caption_needs_binding_and_valid_options() -> None:
    with pytest.raises(ConfigError, match="label_smoothing"):
        build_objective([{"name": "caption", "label_smoothing": 1.5}])
    with pytest.raises(ConfigError, match="unknown option"):
        build_objective([{"name": "caption", "depth": 3}])
    loss = CaptionLoss()
    with pytest.raises(ConfigError, match="bound"):
        loss({}, {}, context=None)
    model = create_model("clip-tiny", pretrained=False, **TINY)
    with pytest.raises(ConfigError, match="trained tokenizer"):
        loss.bind(model)
    model = create_model("clip-tiny", pretrained=False, tokenizer_texts=["no acute finding", "left effusion"],
                         **TINY)
    loss.bind(model)
    images = torch.rand(2, 1, 32, 32)
    tok = model.tokenizer(["no acute finding", "left effusion"])
    out = model(images, tok["input_ids"], tok["attention_mask"], return_tokens=True)
    ctx = ObjectiveContext(model, images, tok["input_ids"], tok["attention_mask"])
    res = loss(out, {}, context=ctx)
    assert res["loss"].ndim == 0 and torch.isfinite(res["loss"])
    res["loss"].backward()
    assert loss.decoder.head.weight.grad is not None
    assert model.visual.parameters().__next__().grad is not None  # the image tower learns from captions
