"""openclip: adapter vs open_clip itself, on a tiny BiomedCLIP-shaped model built and saved natively.

The model mirrors BiomedCLIP: a timm ViT image tower and a Hugging Face BERT text tower that the
saved ``open_clip_config.json`` names *by hub id* (``fake-org/tiny-pubmedbert``, which does not
exist), with no tokenizer files beside the weights. Loading must work offline from a local text
folder and give exactly open_clip's embeddings, preprocessing included.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
open_clip = pytest.importorskip("open_clip")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from medvl.errors import CheckpointError, ConfigError, MedvlError  # noqa: E402
from medvl.models import load_encoder  # noqa: E402
from medvl.models.pretrained import InputRangeWarning  # noqa: E402

HUB_TEXT_ID = "fake-org/tiny-pubmedbert"
TEXTS = ["no pleural effusion", "small left pneumothorax", "the heart is normal"]
WORDS = ("a the of chest x ray with no small left right pleural effusion pneumothorax normal heart is "
         "lungs are clear cardiomegaly photo this").split()
MEAN, STD = [0.45, 0.5, 0.55], [0.2, 0.25, 0.3]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    # An empty HF cache: nothing a developer downloaded may make these tests pass or fail.
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))


def make_bert_folder(path: Path) -> Path:
    """A tiny BERT (config + WordPiece tokenizer, no weights needed) saved with transformers."""
    from transformers import BertConfig, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
    BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=64).save_pretrained(path)
    return path


def model_cfg(text_name: str) -> dict:
    return {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 32},
        "text_cfg": {"hf_model_name": text_name, "hf_tokenizer_name": text_name, "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 24},
    }


@pytest.fixture(scope="module")
def biomed_like(tmp_path_factory):
    """(folder, bert folder, native model, native tokenizer, native eval transform)."""
    from open_clip.factory import _MODEL_CONFIGS
    from open_clip.push_to_hf_hub import save_for_hf
    from open_clip.transform import PreprocessCfg, image_transform_v2

    root = tmp_path_factory.mktemp("openclip")
    bert = make_bert_folder(root / "tiny-bert")
    _MODEL_CONFIGS["medvl-test-tiny-biomed"] = model_cfg(str(bert))
    try:
        torch.manual_seed(0)
        native = open_clip.create_model("medvl-test-tiny-biomed", pretrained_hf=False,
                                        force_preprocess_cfg={"mean": MEAN, "std": STD}).eval()
        tokenizer = open_clip.get_tokenizer("medvl-test-tiny-biomed")
    finally:
        del _MODEL_CONFIGS["medvl-test-tiny-biomed"]
    folder = root / "model"
    save_for_hf(native, tokenizer, model_cfg(HUB_TEXT_ID), folder, safe_serialization=False)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)  # like BiomedCLIP's repo: the tokenizer is named by hub id
    pp = json.loads((folder / "open_clip_config.json").read_text())["preprocess_cfg"]
    transform = image_transform_v2(PreprocessCfg(**{**pp, "size": 32}), is_train=False)
    return folder, bert, native, tokenizer, transform


def grey_image(size: tuple[int, int] = (32, 32), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random(size) * 255).astype(np.uint8), mode="L")


def as_unit_tensor(img: Image.Image) -> torch.Tensor:
    """A grey PIL image as the [1, 1, H, W] float tensor in [0, 1] medvl callers pass."""
    return torch.from_numpy(np.array(img)).float().div(255)[None, None]


def test_offline_hub_id_without_local_text_folder_explains_what_to_do(biomed_like):
    folder = biomed_like[0]
    with pytest.raises(MedvlError) as info:
        load_encoder(f"openclip:{folder}")
    msg = str(info.value)
    assert HUB_TEXT_ID in msg and "text_cfg.hf_model_name" in msg
    assert f"openclip:{folder}?text=" in msg and str(folder / "text") in msg
    assert f"huggingface-cli download {HUB_TEXT_ID}" in msg


def test_matches_open_clip_including_grey_preprocessing(biomed_like):
    folder, bert, native, tokenizer, transform = biomed_like
    enc = load_encoder(f"openclip:{folder}?text={bert}")
    assert enc.has_text and enc.in_chans == 3 and enc.image_size == 32 and enc.embed_dim == 16
    assert enc.mean == (0.0, 0.0, 0.0) and enc.std == (1.0, 1.0, 1.0)  # normalised inside the encoder
    assert enc.native_mean == pytest.approx(MEAN) and enc.native_std == pytest.approx(STD)
    assert enc.preprocess["model_mean"] == pytest.approx(MEAN)

    images = [grey_image(seed=i) for i in range(3)]
    with torch.no_grad():
        ref = F.normalize(native.encode_image(torch.stack([transform(im) for im in images])), dim=-1)
        ref_text = F.normalize(native.encode_text(tokenizer(TEXTS)), dim=-1)
    ours = enc.encode_image(torch.cat([as_unit_tensor(im) for im in images]))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(enc.encode_text(TEXTS), ref_text, atol=1e-5, rtol=0)
    # Had the encoder normalised with averaged statistics, or not at all, the result would differ.
    wrong = F.normalize(native.encode_image(as_unit_tensor(images[0]).expand(-1, 3, -1, -1)), dim=-1)
    assert (wrong - ref[:1]).abs().max() > 1e-3


def test_text_subfolder_and_safetensors_weights(biomed_like, tmp_path):
    folder, bert, native, tokenizer, _ = biomed_like
    copy_dir = tmp_path / "biomedclip"
    shutil.copytree(folder, copy_dir)
    shutil.copytree(bert, copy_dir / "text")
    from safetensors.torch import save_file

    (copy_dir / "open_clip_pytorch_model.bin").unlink()
    save_file({k: v.contiguous() for k, v in native.state_dict().items()}, copy_dir / "open_clip_model.safetensors")
    enc = load_encoder(f"openclip:{copy_dir}")
    with torch.no_grad():
        ref = F.normalize(native.encode_text(tokenizer(TEXTS[:2])), dim=-1)
    torch.testing.assert_close(enc.encode_text(TEXTS[:2]), ref, atol=1e-5, rtol=0)


def test_options_as_kwargs_and_errors(biomed_like, tmp_path):
    folder, bert = biomed_like[:2]
    enc = load_encoder(f"openclip:{folder}", text=str(bert))
    assert enc.name == f"openclip:{folder}"
    with pytest.raises(ConfigError, match="unknown option pool; valid: text"):
        load_encoder(f"openclip:{folder}?pool=mean")
    with pytest.raises(ConfigError, match="given twice"):
        load_encoder(f"openclip:{folder}?text={bert}", text=str(tmp_path))
    with pytest.raises(MedvlError, match="text folder not found"):
        load_encoder(f"openclip:{folder}?text={tmp_path / 'nope'}")
    with pytest.raises(MedvlError, match="folder not found"):
        load_encoder(f"openclip:{tmp_path / 'missing'}")
    empty = tmp_path / "noweights"
    empty.mkdir()
    shutil.copy(folder / "open_clip_config.json", empty)
    with pytest.raises(CheckpointError, match="no weights file"):
        load_encoder(f"openclip:{empty}?text={bert}")
    with pytest.raises(MedvlError, match="not in the Hugging Face cache and the Hub is offline"):
        load_encoder("openclip:hf-hub:fake-org/not-cached")


def test_grey_equals_repeated_rgb_and_range_warning_once(biomed_like):
    folder, bert = biomed_like[:2]
    enc = load_encoder(f"openclip:{folder}?text={bert}")
    x = torch.rand(2, 1, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # [0, 1] input: no warning at all
        grey = enc.encode_image(x)
    torch.testing.assert_close(grey, enc.encode_image(x.expand(-1, 3, -1, -1)))
    normalised = (x - 0.5) / 0.25
    with pytest.warns(InputRangeWarning, match=r"input values span \[-2.*already normalised"):
        enc.encode_image(normalised)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputRangeWarning)
        enc.encode_image(normalised)  # once per encoder
    enc2 = load_encoder(f"openclip:{folder}?text={bert}")
    with pytest.warns(InputRangeWarning, match="0-255 pixel values"):
        enc2.encode_image(x * 255)


def test_resizes_other_input_sizes_and_image_model_trains(biomed_like):
    folder, bert = biomed_like[:2]
    enc = load_encoder(f"openclip:{folder}?text={bert}")
    assert enc.encode_image(torch.rand(2, 1, 48, 40)).shape == (2, 16)
    module = copy.deepcopy(enc.image_model()).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(F.normalize(module(x), dim=-1), enc.encode_image(x), atol=1e-5, rtol=0)
    module.train()(x).sum().backward()
    assert any(p.grad is not None for p in module.parameters())


def test_finetune_goes_through_image_model_with_preprocessing(biomed_like, finetune_check):
    """Fine-tuning an openclip: model sees the adapter's normalisation (it used to get raw pixels)."""
    folder, bert = biomed_like[:2]
    finetune_check(lambda: load_encoder(f"openclip:{folder}?text={bert}"))
