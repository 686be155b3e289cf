"""Load test of ``medvl serve``: N concurrent clients on loopback for a bounded time.

Sets everything up itself in a temp folder: a real tiny model (``clip-tiny``, random weights,
tokenizer trained on phantom reports), a case index of ``--vectors`` synthetic clustered unit
vectors (the model's dim; auto kind, so IVF at 100k) whose rows carry real phantom reports and
thumbnails, then starts ``medvl serve`` as a *separate process* (so the clients' event loop does
not share the server's GIL) and runs ``--clients`` httpx async clients for ``--duration`` seconds.

Prints throughput, latency p50/p90/p99/max, errors and the server's mean micro-batch sizes (from
``/metrics``). Target: no errors and p99 < 200 ms for text search with 16 clients.

Usage::

    python benchmarks/serve_load.py                          # 16 clients, 20 s, text search, 100k vectors
    python benchmarks/serve_load.py --mode image --clients 8
    python benchmarks/serve_load.py --mode mixed --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

QUERIES = [
    "small right pleural effusion", "left apical pneumothorax", "cardiomegaly with clear lungs",
    "right lower lobe consolidation", "a 12 mm nodule in the left upper zone", "no acute cardiopulmonary process",
    "enlarged cardiac silhouette", "blunting of the left costophrenic angle", "patchy airspace opacity",
    "possible small pneumothorax on the right", "normal chest radiograph", "bilateral pleural effusions",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(workdir: Path, n_vectors: int, seed: int) -> tuple[Path, Path, list[bytes]]:
    """Model dir, index dir and a few query images."""
    from PIL import Image

    from medvl.data.manifest import load_manifest
    from medvl.data.synthetic import generate_phantoms
    from medvl.models import create_model, save_model
    from medvl.serve.images import read_picture, thumbnail_png
    from medvl.serve.index import CaseIndex, CaseRecord, l2_normalize

    t0 = time.perf_counter()
    manifest = load_manifest(generate_phantoms(workdir / "phantoms", n=64, size=64, seed=seed))
    reports = [s.text for s in manifest.samples]
    model = create_model("clip-tiny", tokenizer_texts=reports, pretrained=False)
    save_model(model, workdir / "model")
    pictures = [read_picture(manifest.resolve(s.image[0])) for s in manifest.samples]
    thumbs = [thumbnail_png(p, 48) for p in pictures]
    dim = model.embed_dim
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((500, dim)).astype(np.float32)
    vecs = l2_normalize(centers[rng.integers(0, 500, n_vectors)]
                        + 0.5 * rng.standard_normal((n_vectors, dim), dtype=np.float32) / np.sqrt(dim) * 4)
    records = []
    for i in range(n_vectors):
        s = manifest.samples[i % len(manifest.samples)]
        records.append(CaseRecord(image=f"synthetic/{i:07d}.png", text=s.text, labels=dict(s.labels),
                                  patient_id=f"syn{i // 3:06d}", split="train", row=i + 1, source="synthetic",
                                  thumbnail=thumbs[i % len(thumbs)]))
    index = CaseIndex.create(workdir / "index", model=str(workdir / "model"), image_vectors=vecs, records=records)
    print(f"setup: {n_vectors:,} vectors dim {dim}, index kind {index.meta.kind} {index.meta.params}, "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    index.close()
    query_images = []
    for p in pictures[:8]:
        buf = io.BytesIO()
        Image.fromarray(p).save(buf, format="PNG")
        query_images.append(buf.getvalue())
    return workdir / "model", workdir / "index", query_images


async def client_loop(client, mode: str, images: list[bytes], deadline: float, warmup_until: float,
                      latencies: list[float], errors: list[str], k: int, rng: random.Random) -> None:
    while time.perf_counter() < deadline:
        kind = mode if mode != "mixed" else rng.choice(["text", "text", "image"])
        t0 = time.perf_counter()
        try:
            if kind == "text":
                r = await client.post("/v1/search", json={"text": rng.choice(QUERIES), "k": k})
            else:
                r = await client.post("/v1/search", files={"file": ("q.png", rng.choice(images), "image/png")},
                                      data={"k": str(k)})
            ok = r.status_code == 200 and len(r.json()["results"]) == k
            if not ok:
                errors.append(f"HTTP {r.status_code}")
        except Exception as exc:  # noqa: BLE001 - every failure counts as an error
            errors.append(type(exc).__name__)
            ok = False
        if t0 >= warmup_until and ok:
            latencies.append((time.perf_counter() - t0) * 1000)


async def run_load(url: str, clients: int, duration: float, warmup: float, mode: str, images: list[bytes],
                   k: int, seed: int) -> tuple[list[float], list[str], float]:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        start = time.perf_counter()
        warmup_until, deadline = start + warmup, start + warmup + duration
        await asyncio.gather(*[client_loop(client, mode, images, deadline, warmup_until, latencies, errors, k,
                                           random.Random(seed + i)) for i in range(clients)])
    return latencies, errors, duration


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), to report cost independent of contention."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def batch_means(metrics_text: str) -> dict[str, float]:
    out = {}
    for stage in ("text", "image", "search"):
        s = re.search(rf'medvl_batch_size_sum\{{stage="{stage}"\}} ([0-9.e+]+)', metrics_text)
        c = re.search(rf'medvl_batch_size_count\{{stage="{stage}"\}} ([0-9.e+]+)', metrics_text)
        if s and c and float(c.group(1)):
            out[stage] = float(s.group(1)) / float(c.group(1))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds (after warm-up)")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--mode", choices=["text", "image", "mixed"], default="text")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import httpx

    with tempfile.TemporaryDirectory(prefix="medvl-load-") as tmp:
        model_dir, index_dir, images = prepare(Path(tmp), args.vectors, args.seed)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        server = subprocess.Popen(
            [sys.executable, "-m", "medvl.cli", "serve", "--index", str(index_dir), "--model", str(model_dir),
             "--port", str(port), "--log-level", "warning", "--max-batch", str(args.max_batch),
             "--max-wait-ms", str(args.max_wait_ms)], env=env, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("server did not start")
                time.sleep(0.3)
            load_before = os.getloadavg()[0]
            cpu0, client0 = process_cpu_seconds(server.pid), time.process_time()
            latencies, errors, duration = asyncio.run(run_load(url, args.clients, args.duration, args.warmup,
                                                               args.mode, images, args.k, args.seed))
            server_cpu = process_cpu_seconds(server.pid) - cpu0
            client_cpu = time.process_time() - client0
            means = batch_means(httpx.get(url + "/metrics", timeout=10).text)
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    print(f"\nmode={args.mode} clients={args.clients} duration={duration:.0f}s vectors={args.vectors:,} k={args.k} "
          f"max_batch={args.max_batch} max_wait_ms={args.max_wait_ms} cores={os.cpu_count()}")
    print("| requests | throughput req/s | p50 ms | p90 ms | p99 ms | max ms | errors "
          "| mean batch (text/image/search) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    batches = " / ".join(f"{means.get(s, float('nan')):.1f}" for s in ("text", "image", "search"))
    print(f"| {len(latencies)} | {len(latencies) / duration:.1f} | {np.percentile(lat, 50):.1f} | "
          f"{np.percentile(lat, 90):.1f} | {np.percentile(lat, 99):.1f} | {lat.max():.1f} | {len(errors)} | "
          f"{batches} |")
    if errors:
        from collections import Counter

        print("errors:", dict(Counter(errors)))
    total = max(1, len(latencies) + len(errors))
    print(f"server CPU {server_cpu * 1000 / total:.2f} ms/request, client CPU {client_cpu * 1000 / total:.2f} "
          f"ms/request (incl. warm-up); 1-min load average at start {load_before:.1f} on {os.cpu_count()} cores "
          f"(other processes share them)")
    p99 = float(np.percentile(lat, 99))
    verdict = "PASS" if not errors and p99 < 200 else "FAIL"
    print(f"{verdict}: target no errors and p99 < 200 ms (got {len(errors)} errors, p99 {p99:.1f} ms)")


if __name__ == "__main__":
    main()
