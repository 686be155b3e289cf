"""WebDataset shards: same samples as the manifest, readable by webdataset, trainable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trainutil import make_manifest, tiny_config

from medvl.cli import main
from medvl.data.dataset import ManifestDataset
from medvl.errors import ManifestError
from medvl.train.config import build_train_config
from medvl.train.shards import ShardDataset, read_index
from medvl.train.trainer import train


def test_shards_roundtrip_and_train(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path / "data", n=40, n_val=6)
    out = tmp_path / "shards"
    with pytest.raises(SystemExit) as exc:
        main(["data", "shards", str(manifest), "--out", str(out), "--shard-size", "16"])
    assert exc.value.code in (0, None)
    index = read_index(out)
    assert index["num_samples"] == 46 and [s["num_samples"] for s in index["shards"]] == [16, 16, 14]

    # Plain WebDataset can stream the tars (image bytes, text, JSON per key).
    import webdataset as wds

    first = next(iter(wds.WebDataset(str(out / "shard-000000.tar"), shardshuffle=False)))
    assert set(first) >= {"__key__", "img0.png", "txt", "json"}
    assert first["txt"].decode() == "a small opacity in the upper left zone"

    kw = {"image_size": 28, "channels": 1, "augment": True, "mean": (0.0,), "std": (1.0,), "seed": 3}
    ref = ManifestDataset(manifest, split="val", **kw)
    sh = ShardDataset(out, split="val", **kw)
    assert len(sh) == len(ref) == 6 and sh.texts == [s.text for s in ref.samples]
    for ds in (ref, sh):
        ds.set_epoch(2)
    for i in range(len(sh)):
        a, b = ref[i], sh[i]
        assert torch.equal(a["image"], b["image"]) and a["text"] == b["text"] and a["row"] == b["row"]
        assert torch.equal(a["labels"], b["labels"])

    cfg = build_train_config(tiny_config(manifest, tmp_path / "run", train={"max_steps": 2, "ckpt_every": 100}),
                             [f"data.shards={out}"])
    assert train(cfg).step == 2
    with pytest.raises(ManifestError, match="no samples with split='nope'"):
        ShardDataset(out, split="nope")
