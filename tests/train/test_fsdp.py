"""FSDP2 on CPU (gloo, 2 processes) against the 1-process run: gradients, losses, checkpoints, launch.

* ``test_sharded_gradients_equal_single_process``: one forward/backward of the same global batch,
  each rank holding half of it; the unsharded FSDP gradients equal the 1-process gradients (with
  and without per-block activation checkpointing), and so does the loss after one AdamW step.
* ``test_medvl_train_fsdp_matches_one_process``: the real ``medvl train --nproc 2`` path with
  ``train.distributed=fsdp`` + activation checkpointing + gradient accumulation follows the
  1-process loss trajectory and writes an ordinary full checkpoint.
* the multi-node launch path (``torchrun --nnodes 1 --rdzv-endpoint localhost:PORT``) runs the
  same ``medvl train``.

Only the first (with checkpointing) is in the default tier: each 2-process run pays two torch
imports, ~1 min on a loaded 2-core machine. The others are ``slow``.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from trainutil import medvl_cmd, tiny_config, write_config

from medvl.train import checkpoint as ck
from medvl.train.config import build_train_config, resolve_precision
from medvl.train.trainer import train

MODEL = {"image.name": "test_vit", "image.image_size": 28, "image.patch_size": 7, "embed_dim": 32,
         "text.width": 32, "text.layers": 2, "text.heads": 2, "text.context_length": 16}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _batch(n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(3, 17, (n,), generator=g)
    mask = (torch.arange(16)[None, :] < lengths[:, None]).long()
    return {"image": torch.rand(n, 1, 28, 28, generator=g),
            "input_ids": torch.randint(1, 4096, (n, 16), generator=g) * mask, "attention_mask": mask}


def _step(model, objective, opt, b, params):  # type: ignore[no-untyped-def]
    from medvl.train.trainer import forward_loss

    loss = forward_loss(model, objective, b["image"], b["input_ids"], b["attention_mask"], b)["loss"]
    loss.backward()
    return loss.detach()


def _run(rank: int, world: int, port: int, ckpt: bool, out: str) -> None:
    """One rank: build the same model, shard it when world > 1, step twice, save grads and losses."""
    import torch.distributed as dist

    from medvl.models import create_model
    from medvl.objectives import build_objective
    from medvl.train.fsdp import shard_model, to_local_value

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = create_model("clip-tiny", pretrained=False, **MODEL).train()
    if ckpt:
        model.set_grad_checkpointing(True)
    names = [n for n, _ in model.named_parameters()]
    if world > 1:
        shard_model(model)
    objective = build_objective([{"name": "infonce"}])
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    full = _batch()
    per = full["image"].shape[0] // world
    b = {k: v[rank * per:(rank + 1) * per] for k, v in full.items()}
    loss1 = _step(model, objective, opt, b, params)
    grads = {n: to_local_value(p.grad).clone() for n, p in zip(names, params, strict=True)}
    opt.step()
    opt.zero_grad()
    loss2 = _step(model, objective, opt, b, params)
    if rank == 0:
        torch.save({"loss1": float(loss1), "loss2": float(loss2), "grads": grads}, out)
    if world > 1:
        dist.destroy_process_group()


@pytest.mark.parametrize("ckpt", [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=["plain", "activation-checkpointing"])
def test_sharded_gradients_equal_single_process(tmp_path: Path, ckpt: bool) -> None:
    one, two = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    _run(0, 1, 0, False, one)
    mp.spawn(_run, args=(2, _free_port(), ckpt, two), nprocs=2, join=True)
    a, b = torch.load(one), torch.load(two)
    assert b["loss1"] == pytest.approx(a["loss1"], rel=1e-5)
    assert b["loss2"] == pytest.approx(a["loss2"], rel=1e-4)
    assert a["loss2"] != pytest.approx(a["loss1"], rel=1e-4)  # the step changed the model
    assert set(a["grads"]) == set(b["grads"])
    for name, g in a["grads"].items():
        torch.testing.assert_close(b["grads"][name], g, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def _losses(out: Path) -> list[float]:
    with (out / "metrics.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


OVERRIDES = ["model.overrides.image.name=test_vit", "model.overrides.image.patch_size=7", "train.max_steps=3",
             "train.ckpt_every=3", "optim.grad_accum=2", "train.activation_checkpointing=true"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fsdp", "ddp"])
def test_medvl_train_fsdp_matches_one_process(tiny_manifest: Path, tmp_path: Path, mode: str) -> None:
    """Both distributed modes (DDP shares the accumulation/no-sync helper) follow the 1-process run."""
    raw = tiny_config(tiny_manifest, tmp_path / "unused")
    cfg = write_config(tmp_path / "cfg.yaml", raw)
    one, two = tmp_path / "one", tmp_path / "two"
    train(build_train_config(raw, [*OVERRIDES, f"train.out_dir={one}"]))
    r = subprocess.run(medvl_cmd("train", "--config", str(cfg), "--out", str(two), "--nproc", "2", *OVERRIDES,
                                 f"train.distributed={mode}"), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es)" in r.stderr
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 3
    assert b == pytest.approx(a, rel=1e-4)
    # The checkpoint holds full (unsharded) weights, identical in shape to the 1-process one.
    from safetensors.torch import load_file

    wa, wb = load_file(one / "last" / "weights.safetensors"), load_file(two / "last" / "weights.safetensors")
    assert {k: v.shape for k, v in wa.items()} == {k: v.shape for k, v in wb.items()}
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-3, atol=1e-5) for k in wa)
    state = ck.load_train_state(two / "last")
    assert len(state["rng"]) == 2 and state["optimizer"]["state"]


@pytest.mark.slow
def test_fsdp_resume_continues(tiny_manifest: Path, tmp_path: Path) -> None:
    """2 processes under FSDP: 2 steps + --resume to 4 == 4 steps straight (optimizer state round trip)."""
    raw = tiny_config(tiny_manifest, tmp_path / "unused")
    cfg = write_config(tmp_path / "cfg.yaml", raw)
    const = [*OVERRIDES[:2], "optim.min_lr_ratio=1.0", "optim.warmup_steps=0", "train.ckpt_every=2",
             "train.distributed=fsdp"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"

    def run(out: Path, *extra: str) -> None:
        r = subprocess.run(medvl_cmd("train", "--config", str(cfg), "--out", str(out), "--nproc", "2", *const,
                                     *extra), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]

    run(straight, "train.max_steps=4")
    run(resumed, "train.max_steps=2")
    run(resumed, "train.max_steps=4", "--resume")
    from safetensors.torch import load_file

    a = load_file(straight / "last" / "weights.safetensors")
    b = load_file(resumed / "last" / "weights.safetensors")
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)


@pytest.mark.slow
def test_multinode_style_launch_runs_medvl_train(tiny_manifest: Path, tmp_path: Path) -> None:
    """What each node of a cluster runs (``--nnodes``, a c10d rendezvous endpoint), here 1 node x 2 processes,
    through the same ``medvl train --nproc`` entry point."""
    raw = tiny_config(tiny_manifest, tmp_path / "unused")
    cfg = write_config(tmp_path / "cfg.yaml", raw)
    out = tmp_path / "mn"
    r = subprocess.run(medvl_cmd("train", "--config", str(cfg), "--out", str(out), "--nproc", "2", "--nnodes", "1",
                                 "--rdzv-endpoint", f"localhost:{_free_port()}", "--rdzv-id", "medvl-test",
                                 *OVERRIDES[:2], "train.max_steps=2", "train.ckpt_every=2"),
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es)" in r.stderr
    assert len(_losses(out)) == 2


def test_launch_commands() -> None:
    from medvl.errors import ConfigError
    from medvl.train.launch import torchrun_command

    local = torchrun_command(2, ["train"])
    assert "--standalone" in local and "--nproc_per_node=2" in local and local[-2:] == ["medvl.cli", "train"]
    multi = torchrun_command(4, ["train"], nnodes=2, rdzv_endpoint="head:29500", rdzv_id="job7")
    assert {"--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=head:29500", "--rdzv-id=job7"} <= set(multi)
    assert "--standalone" not in multi
    with pytest.raises(ConfigError, match="needs --rdzv-endpoint"):
        torchrun_command(2, ["train"], nnodes=2)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        torchrun_command(2, ["train"], rdzv_endpoint="head")


def test_precision_auto_is_bf16_on_cuda_fp32_on_cpu() -> None:
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cuda") == "fp32"
    assert build_train_config({}).train.precision == "auto"
    with pytest.raises(Exception, match="train.distributed"):
        build_train_config({}, ["train.distributed=zero"])
