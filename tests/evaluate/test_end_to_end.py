"""Every evaluator through the CLI on a tiny PNG manifest with a real (untrained) tiny CLIP model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medvl.cli import main
from medvl.data.card import ClassInfo, DatasetCard
from medvl.data.manifest import load_manifest, write_manifest
from medvl.evaluate.features import extract_features
from medvl.evaluate.results import load_results
from medvl.models.encoder import load_encoder

CLASSES = ["benign", "malignant"]


def run(args: list[str]) -> None:
    """The console entry point exits with SystemExit(0) on success."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """40 28-px images: 'malignant' ones carry a bright blob; each patient has 2 images."""
    root = tmp_path_factory.mktemp("toy")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(48):
        y = i % 2
        img = rng.integers(0, 60, (28, 28)).astype(np.uint8)
        if y:
            img[8:20, 8:20] = 220
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        split = "train" if i < 24 else ("val" if i < 32 else "test")
        rows.append({"image": f"images/{i}.png", "text": f"{'a bright mass' if y else 'normal tissue'} case {i}",
                     "labels": CLASSES[y], "split": split, "patient_id": f"p{i // 2}"})
    write_manifest(rows, root / "manifest.csv")
    DatasetCard(name="toy", task="binary", templates=["an ultrasound showing {label}", "{label}"],
                classes=[ClassInfo("benign", synonyms=["normal tissue"]),
                         ClassInfo("malignant", synonyms=["a bright mass"])]).save(root / "card.yaml")
    from medvl.models import create_model, save_model

    torch.manual_seed(0)
    model = create_model("clip-tiny", tokenizer_texts=[r["text"] for r in rows if r["split"] == "train"],
                         **{"image.image_size": 28})
    save_model(model, root / "model")
    return {"root": root, "manifest": root / "manifest.csv", "model": root / "model", "cache": root / "cache"}


def test_zeroshot_and_retrieval_cli(toy: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "zs.json"
    run(["eval", "zeroshot", "-m", str(toy["model"]), "-d", str(toy["manifest"]), "--out", str(out),
          "--n-boot", "50", "--cache-dir", str(toy["cache"])])
    records = json.loads(out.read_text())
    auc = next(r for r in records if r["metric"] == "auroc")
    assert auc["n"] == 16 and auc["n_groups"] == 8 and 0 <= auc["value"] <= 1
    assert auc["config"]["prompts_per_class"] == {"benign": 4, "malignant": 4}
    out_r = tmp_path / "ret.json"
    run(["eval", "retrieval", "-m", str(toy["model"]), "-d", str(toy["manifest"]), "--out", str(out_r),
          "--n-boot", "20", "--cache-dir", str(toy["cache"]), "--ks", "1,5,16"])
    metrics = {r["metric"]: r["value"] for r in json.loads(out_r.read_text())}
    assert {"i2t_R@1", "t2i_R@16", "i2t_median_rank", "t2i_P@5(label)"} <= set(metrics)
    assert metrics["i2t_R@1"] <= metrics["i2t_R@5"] <= metrics["i2t_R@16"] == 1.0  # 16 texts: all within 16
    assert 1 <= metrics["t2i_median_rank"] <= 16
    run(["eval", "compare", str(out_r), str(out_r), "--n-boot", "20"])


def test_probe_knn_compare_cli(toy: dict[str, Path], tmp_path: Path) -> None:
    lp = tmp_path / "lp.json"
    run(["eval", "linear-probe", "-m", str(toy["model"]), "-d", str(toy["manifest"]), "--fractions", "0.5,1.0",
          "--c-grid", "0.1,1", "--out", str(lp), "--n-boot", "30", "--cache-dir", str(toy["cache"])])
    runs = load_results(lp)
    assert [r.records[0].config["fraction"] for r in runs] == [0.5, 1.0]
    kn = tmp_path / "knn.json"
    run(["eval", "knn", "-m", "timm:test_resnet", "--in-chans", "1", "--image-size", "28", "-d",
          str(toy["manifest"]), "--k", "3", "--out", str(kn), "--n-boot", "30", "--no-cache"])
    cmp_out = tmp_path / "cmp.json"
    run(["eval", "compare", str(lp), str(kn), "--run-a", "1", "--n-boot", "50", "--out", str(cmp_out)])
    comp = json.loads(cmp_out.read_text())
    methods = {t["method"] for t in comp["tests"]}
    assert {"paired bootstrap", "DeLong"} <= methods and any(m.startswith("McNemar") for m in methods)
    assert comp["n"] == 16 and comp["n_groups"] == 8


def test_finetune_cli_one_epoch(toy: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ft.json"
    run(["eval", "finetune", "-m", "timm:test_resnet", "--in-chans", "1", "--image-size", "28", "-d",
          str(toy["manifest"]), "--epochs", "2", "--batch-size", "8", "--seeds", "0,1", "--out", str(out),
          "--n-boot", "20"])
    runs = load_results(out)
    assert len(runs) == 2 and [r.records[0].config["seed"] for r in runs] == [0, 1]
    cfg = runs[0].records[0].config
    assert cfg["epochs_run"] == 2 and len(cfg["history"]) == 2 and cfg["best_epoch"] in (1, 2)
    assert runs[0].predictions is not None and runs[0].predictions.scores.shape == (16, 2)


def test_finetune_paper_options_reach_the_run(toy: dict[str, Path], tmp_path: Path) -> None:
    """--torch-init and --normalise (the MedMNIST paper's init and 0.5/0.5 inputs) are applied and recorded."""
    out = tmp_path / "ft.json"
    run(["eval", "finetune", "-m", "timm:resnet18", "--in-chans", "1", "--image-size", "28", "-d",
         str(toy["manifest"]), "--protocol", "medmnist", "--small-stem", "--torch-init", "--normalise", "0.5,0.5",
         "--epochs", "1", "--batch-size", "8", "--out", str(out), "--n-boot", "0"])
    cfg = load_results(out)[0].records[0].config
    assert cfg["torch_init"] is True and cfg["small_stem"] is True and cfg["milestones"] == [1, 1]
    assert cfg["preprocess"]["mean"] == [0.5] and cfg["preprocess"]["std"] == [0.5]


@pytest.mark.parametrize("bad", ["0.5", "a,b", "0.5,0"])
def test_finetune_rejects_bad_normalise(toy: dict[str, Path], bad: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["eval", "finetune", "-m", "timm:test_resnet", "-d", str(toy["manifest"]), "--normalise", bad])
    assert exc.value.code == 2


def test_finetune_refuses_normalise_for_self_normalising_models(toy: dict[str, Path]) -> None:
    """A medvl checkpoint normalises inside the model; fixed statistics on top would normalise twice."""
    with pytest.raises(SystemExit) as exc:
        main(["eval", "finetune", "-m", str(toy["model"]), "-d", str(toy["manifest"]), "--normalise", "0.5,0.5",
              "--epochs", "1"])
    assert exc.value.code == 2


def test_protocol_config_checks_normalise() -> None:
    from medvl.errors import ConfigError
    from medvl.evaluate.finetune import protocol_config

    assert protocol_config("medmnist", normalise=[0.5, "0.25"]).normalise == (0.5, 0.25)  # YAML lists work
    for bad in ([0.5], [0.5, 0.0], ["a", 1]):
        with pytest.raises(ConfigError, match="normalise"):
            protocol_config("medmnist", normalise=bad)


def test_torch_init_undoes_timm_zero_init() -> None:
    """timm zero-initialises each residual block's last BatchNorm; PyTorch's default init sets it to 1."""
    from medvl.evaluate.finetune import reset_to_torch_init, use_small_stem
    from medvl.models.encoder import TimmEncoder

    tower = TimmEncoder("resnet18", in_chans=1, image_size=28).tower
    use_small_stem(tower)
    last_bns = [m.bn2 for m in tower.modules() if hasattr(m, "bn2") and hasattr(m, "conv2")]
    assert last_bns and all(float(bn.weight.detach().abs().max()) == 0.0 for bn in last_bns)
    assert reset_to_torch_init(tower) == 40  # ResNet-18: 20 convolutions + 20 BatchNorms
    assert all(torch.equal(bn.weight, torch.ones_like(bn.weight)) for bn in last_bns)
    convs = [m for m in tower.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:  # kaiming_uniform(a=sqrt(5)): |w| <= 1/sqrt(fan_in)
        fan_in = conv.weight[0].numel()
        assert float(conv.weight.detach().abs().max()) <= fan_in ** -0.5 + 1e-6


def test_feature_cache_hits_and_invalidates(toy: dict[str, Path], tmp_path: Path) -> None:
    enc = load_encoder(str(toy["model"]))
    calls = {"n": 0}
    original = enc.encode_image

    def counting(*a: object, **k: object) -> torch.Tensor:
        calls["n"] += 1
        return original(*a, **k)

    enc.encode_image = counting  # type: ignore[method-assign]
    m = load_manifest(toy["manifest"])
    f1 = extract_features(enc, m, "test", cache_dir=tmp_path)
    n_first = calls["n"]
    f2 = extract_features(enc, m, "test", cache_dir=tmp_path)
    assert n_first > 0 and calls["n"] == n_first  # second call read the cache
    np.testing.assert_array_equal(f1.x, f2.x)
    assert f2.ids.tolist() == f1.ids.tolist() and f1.ids[0].startswith("images/")
    extract_features(enc, m, "val", cache_dir=tmp_path)  # another split: new key
    with torch.no_grad():  # changed weights: new key
        next(enc.model.parameters()).add_(1.0)
    extract_features(enc, m, "test", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_finetune_medvl_checkpoint_uses_same_protocol(toy: dict[str, Path]) -> None:
    from medvl.evaluate.finetune import finetune, protocol_config

    cfg = protocol_config("default", epochs=1, batch_size=8)
    [res] = finetune(str(toy["model"]), load_manifest(toy["manifest"]), cfg, seeds=[3], n_boot=0)
    assert res.records[0].config["seed"] == 3 and res.records[0].task == "finetune"
    assert res.predictions is not None and np.allclose(res.predictions.scores.sum(1), 1, atol=1e-5)
