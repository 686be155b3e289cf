"""Shards from a URL: random access and streaming over HTTP (a loopback server) equal the local read.

The server is ``http.server`` with byte-range support (what object stores and CDNs give), bound
to 127.0.0.1 on a free port, serving the shard directory in a daemon thread; the fixture shuts it
down, and every request has a timeout, so nothing outlives the test.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from trainutil import make_manifest, tiny_config

from medvl.errors import ManifestError
from medvl.train.config import build_train_config
from medvl.train.shards import ShardDataset, ShardStream, stream_order, write_shards
from medvl.train.trainer import train

KW = {"image_size": 28, "channels": 1, "augment": True, "mean": (0.0,), "std": (1.0,)}


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler + ``Range: bytes=a-b`` (206 Partial Content), quiet."""

    timeout = 10

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().send_head()
        data = path.read_bytes()
        start_s, _, end_s = rng.removeprefix("bytes=").partition("-")
        start = int(start_s)
        end = min(int(end_s), len(data) - 1) if end_s else len(data) - 1
        body = data[start:end + 1]
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        import io

        return io.BytesIO(body)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, str]]:
    root = tmp_path_factory.mktemp("stream")
    manifest = make_manifest(root / "data", n=36, n_val=4)
    shards = root / "shards"
    write_shards(manifest, shards, shard_size=8)
    handler = functools.partial(RangeHandler, directory=str(shards))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield manifest, shards, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _same(a: dict, b: dict) -> bool:  # type: ignore[type-arg]
    return torch.equal(a["image"], b["image"]) and a["text"] == b["text"] and a["row"] == b["row"]


def test_random_access_over_http_equals_local(served: tuple[Path, Path, str]) -> None:
    _, shards, url = served
    local, remote = ShardDataset(shards, seed=1, **KW), ShardDataset(url, seed=1, **KW)
    assert len(local) == len(remote) == 36
    for i in (0, 7, 8, 35):
        assert _same(local[i], remote[i])


def test_stream_is_shuffled_complete_and_resumes_exactly(served: tuple[Path, Path, str]) -> None:
    _, shards, url = served
    full = list(ShardStream(url, buffer=6, seed=4, **KW))
    order = ShardStream(shards, buffer=6, seed=4, **KW).order(0)
    assert sorted(order) == list(range(36)) and order != list(range(36))  # every sample once, shuffled
    local = ShardDataset(shards, seed=4, **KW)
    assert all(_same(s, local[i]) for s, i in zip(full, order, strict=True))  # same pixels/augmentation
    assert stream_order(ShardStream(shards, buffer=6, seed=4, **KW).shard_entries, 4, 1, 6) != order  # per epoch

    # Stop after 13 samples, save the position, resume in a fresh object: the rest, exactly.
    stream = ShardStream(url, buffer=6, seed=4, **KW)
    it = iter(stream)
    head = [next(it) for _ in range(13)]
    state = stream.state_dict()
    assert state == {"epoch": 0, "position": 13}
    resumed = ShardStream(url, buffer=6, seed=4, **KW)
    resumed.load_state_dict(state)
    tail = list(resumed)
    assert len(head) + len(tail) == 36
    assert all(_same(a, b) for a, b in zip(head + tail, full, strict=True))
    assert resumed.state_dict() == {"epoch": 1, "position": 0}


def test_stream_ranks_partition_the_epoch(served: tuple[Path, Path, str]) -> None:
    _, shards, _ = served
    parts = [[s["row"] for s in ShardStream(shards, buffer=4, seed=0, rank=r, world_size=2, **KW)] for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 18 and not set(parts[0]) & set(parts[1])


def test_train_from_http_shards(served: tuple[Path, Path, str], tmp_path: Path) -> None:
    manifest, _, url = served
    cfg = build_train_config(tiny_config(manifest, tmp_path / "run", train={"max_steps": 2, "ckpt_every": 100}),
                             [f"data.shards={url}"])
    assert train(cfg).step == 2


def test_missing_url_is_one_clear_error(served: tuple[Path, Path, str]) -> None:
    _, _, url = served
    with pytest.raises(ManifestError, match="index.json"):
        ShardDataset(url + "/nope", **KW)


def test_train_streaming_from_http_resumes_exactly(served: tuple[Path, Path, str], tmp_path: Path) -> None:
    """data.stream_buffer: 2 steps + --resume to 4 == 4 steps straight (the stream position is restored)."""
    from safetensors.torch import load_file

    manifest, _, url = served
    const = [f"data.shards={url}", "data.stream_buffer=8", "optim.min_lr_ratio=1.0", "optim.warmup_steps=0",
             "train.batch_size=8", "train.ckpt_every=2"]

    def run(out: Path, steps: int, resume: bool = False) -> list[float]:
        raw = tiny_config(manifest, out)
        res = train(build_train_config(raw, [*const, f"train.max_steps={steps}"]), resume=resume)
        return [loss for _, loss in res.losses]

    straight = run(tmp_path / "straight", 6)  # 6 steps of 8 > 36 samples: crosses an epoch boundary
    first = run(tmp_path / "resumed", 3)
    rest = run(tmp_path / "resumed", 6, resume=True)
    assert first + rest == pytest.approx(straight, rel=1e-6)
    a = load_file(tmp_path / "straight" / "last" / "weights.safetensors")
    b = load_file(tmp_path / "resumed" / "last" / "weights.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(Exception, match="data.stream_buffer"):
        build_train_config(tiny_config(manifest, tmp_path / "x"), ["data.stream_buffer=4"])


@pytest.mark.slow
def test_streaming_two_processes_match_one(served: tuple[Path, Path, str], tmp_path: Path) -> None:
    """DDP over a stream: each rank takes its contiguous slice of every global batch, so 2 processes
    follow the 1-process losses."""
    import csv
    import subprocess

    from trainutil import medvl_cmd, write_config

    manifest, shards, _ = served
    raw = tiny_config(manifest, tmp_path / "unused")
    cfg = write_config(tmp_path / "cfg.yaml", raw)
    over = [f"data.shards={shards}", "data.stream_buffer=8", "train.batch_size=8", "train.max_steps=3",
            "train.ckpt_every=3", "model.overrides.image.name=test_vit", "model.overrides.image.patch_size=7"]
    one, two = tmp_path / "one", tmp_path / "two"
    train(build_train_config(raw, [*over, f"train.out_dir={one}"]))
    r = subprocess.run(medvl_cmd("train", "--config", str(cfg), "--out", str(two), "--nproc", "2", *over),
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]

    def losses(out: Path) -> list[float]:
        with (out / "metrics.csv").open() as f:
            return [float(row["loss"]) for row in csv.DictReader(f)]

    assert losses(two) == pytest.approx(losses(one), rel=1e-4) and len(losses(one)) == 3
