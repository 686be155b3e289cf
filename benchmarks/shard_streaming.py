"""Reading shards over HTTP vs from local disk: random access and streaming, samples/s.

    .venv/bin/python benchmarks/shard_streaming.py                 # 512 phantoms, shards of 64, 3 rounds
    .venv/bin/python benchmarks/shard_streaming.py --n 2048 --shard-size 256 --latency-ms 20

The same shards (``medvl data shards`` of synthetic 128 px phantom PNGs) are read four ways, each
sample decoded and resized to 64 px exactly as training does: ``ShardDataset`` (one byte-range
read per sample) and ``ShardStream`` (one streaming GET per shard, shuffle buffer 256), each from
the local directory and from ``http://127.0.0.1:PORT`` (``http.server`` with byte ranges, in a
thread of this process). ``--latency-ms`` adds a delay to every HTTP request, to see what a
remote object store's round trip does to per-sample reads. Interleaved rounds; median samples/s.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import io
import statistics
import tempfile
import threading
import time
from pathlib import Path


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=a-b`` support and an optional per-request delay."""

    delay = 0.0

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        if self.delay:
            time.sleep(self.delay)
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().send_head()
        data = path.read_bytes()
        a, _, b = rng.removeprefix("bytes=").partition("-")
        start, end = int(a), (min(int(b), len(data) - 1) if b else len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(data[start:end + 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    args = ap.parse_args()
    import torch

    from medvl.data.synthetic import generate_phantoms
    from medvl.train.shards import ShardDataset, ShardStream, write_shards

    torch.set_num_threads(1)
    kw = {"image_size": 64, "channels": 1, "augment": False}
    with tempfile.TemporaryDirectory(prefix="medvl-streambench-") as tmp:
        manifest = generate_phantoms(Path(tmp) / "data", n=args.n, size=128, seed=0)
        shards = Path(tmp) / "shards"
        write_shards(manifest, shards, shard_size=args.shard_size)
        RangeHandler.delay = args.latency_ms / 1000
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                 functools.partial(RangeHandler, directory=str(shards)))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            variants = {
                "random access, local": lambda: ShardDataset(shards, split=None, **kw),
                "random access, HTTP": lambda: ShardDataset(url, split=None, **kw),
                "stream, local": lambda: ShardStream(shards, split=None, buffer=256, **kw),
                "stream, HTTP": lambda: ShardStream(url, split=None, buffer=256, **kw),
            }
            rates: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(args.rounds):
                for name, make in variants.items():
                    ds = make()
                    t0 = time.perf_counter()
                    n = sum(1 for _ in (ds if isinstance(ds, ShardStream) else (ds[i] for i in range(len(ds)))))
                    rates[name].append(n / (time.perf_counter() - t0))
        finally:
            server.shutdown()
            server.server_close()
    print(f"{args.n} samples in shards of {args.shard_size}, decoded to 64 px, {args.rounds} interleaved rounds, "
          f"HTTP latency +{args.latency_ms:g} ms per request")
    local = {"random access": statistics.median(rates["random access, local"]),
             "stream": statistics.median(rates["stream, local"])}
    for name, v in rates.items():
        kind = name.split(",")[0]
        print(f"  {name:22s} {statistics.median(v):8.0f} samples/s ({min(v):.0f}-{max(v):.0f})  "
              f"{statistics.median(v) / local[kind]:.2f}x of local")


if __name__ == "__main__":
    main()
