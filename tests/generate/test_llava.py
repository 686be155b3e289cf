"""LLaVA-style adapter on a tiny random GPT-2: stage 1 trains only the projector, stage 2 only the
projector and LoRA (the LM's own weights never change), save/load reproduces generation, reports
and VQA answers come out through the same CLI paths, and an LM folder without a tokenizer is one
clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_lm import make_tiny_lm
from typer.testing import CliRunner

from medvl.cli.app import app
from medvl.data.manifest import load_manifest
from medvl.errors import ConfigError
from medvl.generate import DecodeConfig
from medvl.models.llava import build_llava, lm_folder, load_llava, train_llava


@pytest.fixture(scope="module")
def lm_dir(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [s.text for s in load_manifest(phantoms).samples] + ["USER: ASSISTANT: Write the findings"]
    return make_tiny_lm(tmp_path_factory.mktemp("lm") / "gpt2-tiny", texts)


@pytest.mark.slow
def test_two_stages_train_what_they_should(caption_run: Path, phantoms: Path, lm_dir: Path, tmp_path: Path) -> None:
    model = build_llava(str(caption_run / "last"), f"hf-lm:{lm_dir}", projector="mlp")
    lm_before = {k: v.clone() for k, v in model.lm.state_dict().items()}
    proj_before = {k: v.clone() for k, v in model.projector.state_dict().items()}
    s1 = train_llava(model, phantoms, tmp_path / "s1", stage=1, steps=8, lr=3e-3, batch_size=8)
    assert s1.losses[-1] < s1.losses[0]
    assert all(torch.equal(v, model.lm.state_dict()[k]) for k, v in lm_before.items())
    assert any(not torch.equal(v, model.projector.state_dict()[k]) for k, v in proj_before.items())
    s2 = train_llava(model, phantoms, tmp_path / "s2", stage=2, steps=3, lr=3e-3, batch_size=8)
    lora = {k: v for k, v in model.lm.state_dict().items() if "lora_" in k}
    assert lora and (tmp_path / "s2" / "lora").is_dir()
    base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
            for k, v in model.lm.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(v, base[k]) for k, v in lm_before.items() if k in base)
    assert s2.trainable > s1.trainable

    images = torch.rand(3, 1, 32, 32)
    cfg = DecodeConfig(max_new_tokens=12)
    first = model.generate(images, cfg)
    again = load_llava(tmp_path / "s2").generate(images, cfg)
    assert [g.tokens for g in first] == [g.tokens for g in again]
    single = [model.generate(images[i:i + 1], cfg)[0].tokens for i in range(3)]
    assert single == [g.tokens for g in first]  # left padding keeps batched == one by one


@pytest.mark.slow
def test_llava_generates_reports_and_answers_through_the_cli(caption_run: Path, phantoms: Path, lm_dir: Path,
                                                             tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["llava", "train", "--encoder", str(caption_run / "last"), "--lm", f"hf-lm:{lm_dir}",
                              "--data", str(phantoms), "--stage", "1", "--steps", "2", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["generate", "--model", str(tmp_path / "a"), "--data", str(phantoms), "--max-tokens", "8",
                              "--out", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == sum(
        s.split == "test" for s in load_manifest(phantoms).samples)


def test_lm_folder_without_tokenizer_is_one_line(phantoms: Path, tmp_path: Path) -> None:
    folder = make_tiny_lm(tmp_path / "notok", ["a b c"], vocab_size=300, with_tokenizer=False)
    with pytest.raises(ConfigError, match="has no tokenizer"):
        lm_folder(f"hf-lm:{folder}")
    with pytest.raises(ConfigError, match="not found"):
        lm_folder("hf-lm:/nonexistent/lm")


@pytest.mark.slow
def test_llava_answers_vqa_generatively(caption_run: Path, phantoms: Path, lm_dir: Path, tmp_path: Path) -> None:
    from medvl.data.vqa_synth import generate_vqa
    from medvl.evaluate.vqa import run_vqa_eval

    vqa = generate_vqa(phantoms, pairs=0.0)
    model = build_llava(str(caption_run / "last"), str(lm_dir), projector="linear")
    train_llava(model, vqa, tmp_path / "vqa-adapter", stage=1, steps=2, batch_size=8)
    res = run_vqa_eval(vqa, model=str(tmp_path / "vqa-adapter"), split="val", n_boot=10, answer_type="closed")
    assert res.records[0].config["mode"] == "generate"
    assert 0.0 <= res.value("accuracy_closed") <= 1.0


@pytest.mark.slow
def test_kv_cache_gives_the_uncached_tokens(caption_run: Path, lm_dir: Path) -> None:
    model = build_llava(str(caption_run / "last"), str(lm_dir), projector="linear")
    images = torch.rand(3, 1, 32, 32)
    for cfg in (DecodeConfig(max_new_tokens=10), DecodeConfig(method="beam", num_beams=3, max_new_tokens=8),
                DecodeConfig(method="sample", top_p=0.9, max_new_tokens=8, seed=3)):
        cached = model.generate(images, cfg, instructions=["Is there a nodule?", "Describe.", "Side?"])
        plain = model.generate(images, cfg, instructions=["Is there a nodule?", "Describe.", "Side?"], cache=False)
        assert [g.tokens for g in cached] == [g.tokens for g in plain], cfg.method
        assert [g.score for g in cached] == pytest.approx([g.score for g in plain], abs=1e-4)


@pytest.mark.slow
def test_adapter_on_a_tiny_llama_with_rotary_positions(caption_run: Path, phantoms: Path, tmp_path: Path) -> None:
    texts = [s.text for s in load_manifest(phantoms).samples]
    folder = make_tiny_lm(tmp_path / "llama-tiny", texts, arch="llama")
    model = build_llava(str(caption_run / "last"), f"hf-lm:{folder}", projector="mlp")
    res = train_llava(model, phantoms, tmp_path / "adapter", stage=2, steps=3, lr=3e-3, batch_size=8)
    assert any("lora_" in k for k in model.lm.state_dict()) and len(res.losses) == 3
    images = torch.rand(2, 1, 32, 32)
    for cfg in (DecodeConfig(max_new_tokens=8), DecodeConfig(method="beam", num_beams=2, max_new_tokens=6)):
        cached = model.generate(images, cfg)
        assert [g.tokens for g in cached] == [g.tokens for g in model.generate(images, cfg, cache=False)]
    again = load_llava(tmp_path / "adapter").generate(images, DecodeConfig(max_new_tokens=8))
    assert [g.tokens for g in again] == [g.tokens for g in model.generate(images, DecodeConfig(max_new_tokens=8))]
