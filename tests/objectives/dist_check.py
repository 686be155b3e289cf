"""Two-process (gloo) check that the losses' all-gather with gradients matches one process.

Run as a script (``python dist_check.py``) by ``test_distributed.py``: each rank holds half of a
fixed batch, computes a loss, back-propagates; the loss must equal the single-process loss on
the whole batch, and each shard's gradient ``world_size`` times the single-process gradient
(DDP then averages parameter gradients over ranks, giving the exact full-batch gradient).
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

WORLD = 2
N, D = 6, 5


def data():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(N, D, generator=g), dim=-1)
    txt = F.normalize(torch.randn(N, D, generator=g), dim=-1)
    labels = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 0], [1.0, 1.0], [0, 1.0]])
    texts = ["a", "b", "a", "c", "d", "e"]
    return img, txt, labels, texts


def losses():
    from medvl.objectives import InfoNCELoss, MultiPositiveLoss, QueueLoss, SigLIPLoss

    return {"infonce": InfoNCELoss, "siglip": SigLIPLoss, "multipositive": MultiPositiveLoss,
            "queue": lambda: QueueLoss(size=4)}


def run(name, img, txt, labels, texts, steps=1):
    """Return (loss, image grad, text grad) after ``steps`` calls (the queue fills on step 1)."""
    loss_fn = losses()[name]()
    for _ in range(steps):
        i = img.clone().requires_grad_(True)
        t = txt.clone().requires_grad_(True)
        out = {"image_features": i, "text_features": t, "logit_scale": torch.tensor(5.0),
               "logit_bias": torch.tensor(-1.0)}
        loss = loss_fn(out, {"labels": labels, "text": texts})["loss"]
        loss.backward()
    return loss.detach(), i.grad, t.grad


def worker(rank, init_file, result_file):
    img, txt, labels, texts = data()
    steps = {name: 2 if name == "queue" else 1 for name in losses()}
    # single-process references first, before the process group exists
    refs = {name: run(name, img, txt, labels, texts, steps[name]) for name in losses()}
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    sl = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    errors = []
    for name in losses():
        ref_loss, ref_gi, ref_gt = refs[name]
        loss, gi, gt = run(name, img[sl], txt[sl], labels[sl], texts[sl], steps[name])
        if name == "siglip":  # each rank holds its images' share of the summed loss
            total = loss.clone()
            dist.all_reduce(total)
            loss = total / WORLD
        if not torch.allclose(loss, ref_loss, atol=1e-5):
            errors.append(f"{name}: loss {loss.item()} vs {ref_loss.item()}")
        if not torch.allclose(gi, WORLD * ref_gi[sl], atol=1e-5):
            errors.append(f"{name}: image grad differs")
        if not torch.allclose(gt, WORLD * ref_gt[sl], atol=1e-5):
            errors.append(f"{name}: text grad differs")
    # every rank reports: a rank-1-only mismatch (its shard of the gather) must fail the test too
    with open(f"{result_file}.{rank}", "w") as fh:
        fh.write("\n".join(f"rank {rank}: {e}" for e in errors) if errors else "OK")
    dist.destroy_process_group()


def collect(result_file):
    """'OK' when every rank wrote OK; otherwise every rank's errors (a missing report is an error)."""
    reports = []
    for rank in range(WORLD):
        path = f"{result_file}.{rank}"
        reports.append(open(path).read() if os.path.exists(path) else f"rank {rank}: wrote no report")
    bad = [r for r in reports if r != "OK"]
    return "\n".join(bad) if bad else "OK"


if __name__ == "__main__":
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        init, result = os.path.join(tmp, "init"), os.path.join(tmp, "result")
        # fork: the workers inherit the imported torch instead of re-importing it (seconds each)
        mp.start_processes(worker, args=(init, result), nprocs=WORLD, join=True, start_method="fork")
        text = collect(result)
    print(text)
    sys.exit(0 if text == "OK" else 1)
