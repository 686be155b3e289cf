"""hf: adapter vs transformers itself, on tiny random CLIPModel / SiglipModel / Dinov2Model / ViTModel.

Each model is built from a small config, saved with ``save_pretrained`` beside its image
processor and tokenizer, loaded through ``load_encoder("hf:...")`` and compared with the native
model fed by the native processor -- on *grey* PIL images, so the 1 -> 3 channel expansion,
rescale, crop and mean/std must all match what transformers does.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from medvl.errors import CheckpointError, ConfigError, MedvlError  # noqa: E402
from medvl.models import load_encoder  # noqa: E402
from medvl.models.pretrained import ImagePreprocess  # noqa: E402

TEXTS = ["no pleural effusion", "small left pneumothorax with effusion", "normal"]
WORDS = "no pleural effusion small left right pneumothorax with normal heart lungs clear".split()
SPECIALS = ["[PAD]", "[UNK]", "[MASK]", "[CLS]", "[SEP]"]  # eos id 4 (id 2 would be CLIP's legacy branch)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def save_tokenizer(folder: Path, max_length: int, input_names: list[str] | None = None) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    kwargs = {"model_input_names": input_names} if input_names else {}
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", bos_token="[CLS]", eos_token="[SEP]",
                                  model_max_length=max_length, **kwargs)
    tok.save_pretrained(folder)


def text_cfg(max_pos: int) -> dict:
    return dict(vocab_size=len(SPECIALS) + len(WORDS), max_position_embeddings=max_pos, pad_token_id=0,
                bos_token_id=3, eos_token_id=4, **TINY)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("hf-clip")
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=text_cfg(16), vision_config=dict(image_size=32, patch_size=8, **TINY),
                     projection_dim=24)
    CLIPModel(cfg).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    save_tokenizer(folder, 16)
    return folder


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory) -> Path:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    folder = tmp_path_factory.mktemp("hf-siglip")
    torch.manual_seed(1)
    cfg = SiglipConfig(text_config=text_cfg(12), vision_config=dict(image_size=32, patch_size=8, **TINY))
    SiglipModel(cfg).save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    save_tokenizer(folder, 12, input_names=["input_ids"])  # SigLIP's tokenizer gives no attention mask
    return folder


@pytest.fixture(scope="module")
def dino_folder(tmp_path_factory) -> Path:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("hf-dinov2")
    torch.manual_seed(2)
    Dinov2Model(Dinov2Config(image_size=32, patch_size=8, **TINY)).save_pretrained(folder)
    # DINOv2's recipe: resize the short side (here 40), centre-crop 32, ImageNet statistics.
    BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("hf-vit")
    torch.manual_seed(3)
    ViTModel(ViTConfig(image_size=32, patch_size=8, **TINY)).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def grey_images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8), mode="L") for _ in range(n)]


def as_unit(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(im)).float().div(255)[None] for im in images])


def native(folder: Path, cls_name: str, text: bool = False):
    from transformers import AutoImageProcessor, AutoTokenizer

    model = getattr(transformers, cls_name).from_pretrained(folder, local_files_only=True).eval()
    proc = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True) if text else None
    return model, proc, tok


def feats(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_clip_matches_transformers(clip_folder):
    model, proc, tok = native(clip_folder, "CLIPModel", text=True)
    enc = load_encoder(f"hf:{clip_folder}")
    assert enc.has_text and enc.embed_dim == 24 and enc.in_chans == 3 and enc.image_size == 32
    assert enc.native_mean == pytest.approx(proc.image_mean)
    images = grey_images(3, 32)
    with torch.no_grad():
        ref = F.normalize(feats(model.get_image_features(**proc(images=images, return_tensors="pt"))), dim=-1)
        ref_text = F.normalize(feats(model.get_text_features(**tok(TEXTS, padding=True, return_tensors="pt"))),
                               dim=-1)
    torch.testing.assert_close(enc.encode_image(as_unit(images)), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(enc.encode_text(TEXTS), ref_text, atol=1e-5, rtol=0)


def test_siglip_matches_transformers_with_max_length_padding(siglip_folder):
    model, proc, tok = native(siglip_folder, "SiglipModel", text=True)
    enc = load_encoder(f"hf:{siglip_folder}")
    assert enc.pad_to_max and enc.max_length == 12 and enc.embed_dim == 32
    images = grey_images(2, 32, seed=5)
    with torch.no_grad():
        ref = F.normalize(feats(model.get_image_features(**proc(images=images, return_tensors="pt"))), dim=-1)
        enc_max = tok(TEXTS, padding="max_length", return_tensors="pt")
        ref_text = F.normalize(feats(model.get_text_features(**enc_max)), dim=-1)
        longest = F.normalize(feats(model.get_text_features(**tok(TEXTS, padding=True, return_tensors="pt"))),
                              dim=-1)
    assert (ref_text - longest).abs().max() > 1e-3  # padding matters for SigLIP: the check below can fail
    torch.testing.assert_close(enc.encode_image(as_unit(images)), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(enc.encode_text(TEXTS), ref_text, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_dinov2_resize_crop_and_pooling_match(dino_folder, pool):
    model, proc, _ = native(dino_folder, "Dinov2Model")
    enc = load_encoder(f"hf:{dino_folder}?pool={pool}")
    assert not enc.has_text and enc.image_size == 40 and enc.embed_dim == 32
    assert enc.preprocess["crop"] == [32, 32]
    images = grey_images(2, 40, seed=7)
    with torch.no_grad():
        hidden = model(**proc(images=images, return_tensors="pt")).last_hidden_state
    ref = hidden[:, 0] if pool == "cls" else hidden[:, 1:].mean(1)
    torch.testing.assert_close(enc.encode_image(as_unit(images), normalize=False), ref, atol=1e-5, rtol=0)


def test_vit_pooler_and_image_model(vit_folder):
    model, proc, _ = native(vit_folder, "ViTModel")
    images = grey_images(2, 32, seed=9)
    with torch.no_grad():  # ViT's processor has no do_convert_rgb: grey -> RGB the PIL way, as medvl does
        out = model(**proc(images=[im.convert("RGB") for im in images], return_tensors="pt"))
    pooler = load_encoder(f"hf:{vit_folder}", pool="pooler")
    torch.testing.assert_close(pooler.encode_image(as_unit(images), normalize=False), out.pooler_output,
                               atol=1e-5, rtol=0)
    enc = load_encoder(f"hf:{vit_folder}")
    x = as_unit(images)
    torch.testing.assert_close(enc.encode_image(x, normalize=False), out.last_hidden_state[:, 0], atol=1e-5, rtol=0)
    module = copy.deepcopy(enc.image_model()).eval()
    with torch.no_grad():
        torch.testing.assert_close(module(x.expand(-1, 3, -1, -1)), out.last_hidden_state[:, 0], atol=1e-5, rtol=0)
    module.train()(x.expand(-1, 3, -1, -1)).sum().backward()
    assert any(p.grad is not None for p in module.parameters())
    with pytest.raises(ConfigError, match="unknown pool 'max'"):
        load_encoder(f"hf:{vit_folder}?pool=max")


def test_folder_errors(clip_folder, vit_folder, tmp_path):
    import shutil

    from medvl.models.pretrained import minilm_path

    with pytest.raises(ConfigError, match="pool applies to image-only models"):
        load_encoder(f"hf:{clip_folder}?pool=mean")
    with pytest.raises(MedvlError, match="text-only model.*text tower"):
        load_encoder(f"hf:{minilm_path()}")
    bare = tmp_path / "bare"
    shutil.copytree(vit_folder, bare)
    (bare / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError, match="missing preprocessor_config.json.*huggingface-cli download"):
        load_encoder(f"hf:{bare}")
    with pytest.raises(CheckpointError, match="missing config.json"):
        load_encoder(f"hf:{tmp_path}")


def test_preprocess_geometry_matches_torchvision():
    """Resize-shortest + centre-crop sizes and offsets on a non-square image equal torchvision's."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    x = torch.rand(1, 3, 45, 61)
    pre = ImagePreprocess(mean=[0.0] * 3, std=[1.0] * 3, resize_mode="shortest", size=32, crop=27,
                          interpolation="bilinear")
    ref = TF.center_crop(TF.resize(x, 32, interpolation=InterpolationMode.BILINEAR, antialias=True), [27, 27])
    torch.testing.assert_close(pre(x), ref.clamp(x.min(), x.max()), atol=1e-6, rtol=0)
    squash = ImagePreprocess(mean=[0.5] * 3, std=[0.5] * 3, resize_mode="squash", size=(20, 30))
    assert squash(x).shape[-2:] == (20, 30) and squash.input_size == 20


@pytest.mark.parametrize("fixture", ["clip_folder", "siglip_folder", "vit_folder", "dino_folder"])
def test_finetune_goes_through_image_model(fixture, request, finetune_check):
    """`medvl eval finetune --model hf:<folder>` used to fail ("exposes no trainable image tower")."""
    folder = request.getfixturevalue(fixture)
    finetune_check(lambda: load_encoder(f"hf:{folder}"))
