"""Feature extraction speed: medvl's ``extract_features`` vs open_clip's ``encode_image`` loop, same images.

    .venv/bin/python benchmarks/feature_extraction.py                    # clip-tiny, 512 phantoms, 3 rounds
    .venv/bin/python benchmarks/feature_extraction.py --model clip-small --n 2000 --rounds 5 --workers 0,auto

What is compared (same PNG files on disk, same image tower architecture, batch 128, no_grad):

* **medvl**: a ``clip-tiny`` checkpoint (timm ``test_resnet`` trunk, 64 px, 1 channel; or
  ``--model clip-small``: ViT-Tiny trunk, depth 6, patch 8) saved and loaded back with
  ``load_encoder`` (what ``medvl eval`` does), then
  :func:`medvl.evaluate.features.extract_features` on the split (no cache): ``ManifestDataset``
  decoding + resizing in DataLoader workers (``auto`` = one per spare core, or ``--workers``
  counts), batched encode.
* **open_clip**: ``open_clip.CLIP`` whose timm trunk is the same network (1 channel, 64 px; for
  clip-small ViT-Tiny with patch 8, depth 6, MLP projection), and the loop an open_clip user
  writes: ``PIL.Image.open`` -> torchvision preprocess (grayscale, resize, centre crop, to
  tensor, normalise) -> ``torch.stack`` of 128 -> ``model.encode_image`` under ``no_grad`` -> L2
  normalise.

Both run in this process, interleaved round after round (background load hits them alike); the
median images/s over rounds is reported with min-max, and the ratio of medians. With a small
tower, decoding and resizing dominate and workers matter; with a bigger one (``clip-small`` on
one CPU thread) the encoder's own compute dominates and both sides run the same timm forward.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def make_data(root: Path, n: int, size: int) -> Path:
    """``n`` synthetic chest phantoms (PNG) in one split, ``test``."""
    from medvl.data.synthetic import generate_phantoms

    manifest = generate_phantoms(root / "data", n=n, size=size, seed=0)
    with manifest.open() as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["split"] = "test"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


def build_medvl(root: Path, name: str) -> Any:
    import torch

    from medvl.models import create_model, save_model
    from medvl.models.encoder import load_encoder

    torch.manual_seed(0)
    save_model(create_model(name, pretrained=False), root / name)
    return load_encoder(root / name)


def build_open_clip(name: str) -> Any:
    import open_clip
    import timm
    import torch

    torch.manual_seed(0)
    text = {"width": 64, "heads": 2, "layers": 1, "context_length": 16, "vocab_size": 100}
    if name == "clip-small":
        model = open_clip.CLIP(embed_dim=256, vision_cfg={"timm_model_name": "vit_tiny_patch16_224",
                                                          "timm_model_pretrained": False, "timm_pool": "",
                                                          "timm_proj": "mlp", "image_size": 64}, text_cfg=text)
        # open_clip's TimmModel has no in_chans / patch_size / depth: the same trunk medvl builds.
        model.visual.trunk = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, in_chans=1,
                                               img_size=64, patch_size=8, depth=6)
    else:
        model = open_clip.CLIP(embed_dim=64, vision_cfg={"timm_model_name": "test_resnet",
                                                         "timm_model_pretrained": False, "timm_pool": "avg",
                                                         "timm_proj": "linear", "image_size": 64}, text_cfg=text)
        model.visual.trunk = timm.create_model("test_resnet", pretrained=False, num_classes=0, global_pool="avg",
                                               in_chans=1)
    return model.eval()


def open_clip_loop(model: Any, paths: list[Path], batch: int, size: int) -> int:
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torchvision import transforms as T

    preprocess = T.Compose([T.Grayscale(1), T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                            T.CenterCrop(size), T.ToTensor(), T.Normalize((0.5,), (0.5,))])
    n = 0
    with torch.no_grad():
        for i in range(0, len(paths), batch):
            images = torch.stack([preprocess(Image.open(p)) for p in paths[i:i + batch]])
            feats = F.normalize(model.encode_image(images), dim=-1)
            n += feats.shape[0]
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["clip-tiny", "clip-small"], default="clip-tiny")
    ap.add_argument("--n", type=int, default=512, help="images")
    ap.add_argument("--size", type=int, default=128, help="stored image size (px); both resize to 64")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="auto,0", help="medvl DataLoader worker settings to run (auto or N)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch default)")
    args = ap.parse_args()
    import torch

    from medvl.evaluate.features import extract_features, loader_workers

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="medvl-featbench-") as tmp:
        root = Path(tmp)
        manifest = make_data(root, args.n, args.size)
        with manifest.open() as f:
            paths = [manifest.parent / r["image"] for r in csv.DictReader(f)]
        encoder = build_medvl(root, args.model)
        oc = build_open_clip(args.model)
        settings = [None if w == "auto" else int(w) for w in args.workers.split(",")]
        names = [f"medvl (workers={loader_workers(w)}{' auto' if w is None else ''})" for w in settings]
        rates: dict[str, list[float]] = {k: [] for k in [*names, "open_clip loop"]}
        for _ in range(args.rounds):
            for name, w in zip(names, settings, strict=True):
                t0 = time.perf_counter()
                feats = extract_features(encoder, manifest, split="test", batch_size=args.batch, num_workers=w)
                rates[name].append(feats.n / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            n = open_clip_loop(oc, paths, args.batch, 64)
            rates["open_clip loop"].append(n / (time.perf_counter() - t0))
    print(f"{args.model}: {args.n} PNG images ({args.size} px -> 64 px), batch {args.batch}, {args.rounds} "
          f"interleaved rounds, torch threads {torch.get_num_threads()}")
    print(f"  {'variant':28s} {'images/s median':>16s} {'(min-max)':>16s}")
    for k, v in rates.items():
        print(f"  {k:28s} {statistics.median(v):16.0f} {min(v):8.0f}-{max(v):<8.0f}")
    base = statistics.median(rates["open_clip loop"])
    for k in names:
        r = [a / b for a, b in zip(rates[k], rates["open_clip loop"], strict=True)]
        print(f"  ratio {k}/open_clip: {statistics.median(rates[k]) / base:.2f}x (medians); per round "
              f"{min(r):.2f}-{max(r):.2f}x")


if __name__ == "__main__":
    main()
