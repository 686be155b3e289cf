"""Recall@10 and query latency of the approximate case indexes against exact search.

Builds each index kind exactly as ``medvl index build`` does (:func:`medvl.serve.index.make_faiss_index`
+ :func:`~medvl.serve.index.tune_search`, i.e. IVF with nlist ≈ 4·√N and nprobe tuned for 0.95
recall on noisy indexed vectors; HNSW M=32 with efSearch tuned the same way) on synthetic clustered
unit vectors, then measures on *held-out* queries from the same mixture:

- recall@10 against exact inner-product search (``IndexFlatIP``, the ground truth);
- single-query latency p50/p99 (one ``search`` call per query on one thread);
- batched throughput (all queries in one call, all threads).

Usage::

    python benchmarks/index_recall.py                       # 10k, 100k, 1M at dim 64 (clip-tiny's dim)
    python benchmarks/index_recall.py --sizes 10000,100000 --dim 256 --kinds flat,ivf,hnsw

Keep total runtime under ~10 min on 2 cores: HNSW construction is skipped above ``--hnsw-max``
(default 200k) because building its graph at 1M takes longer than everything else together.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from medvl.serve.index import (  # noqa: E402
    exact_knn,
    l2_normalize,
    make_faiss_index,
    recall_at_k,
    tune_search,
)


def clustered(n: int, dim: int, centers: np.ndarray, rng: np.random.Generator, spread: float = 0.35) -> np.ndarray:
    """Unit vectors around random cluster centres (what embeddings of a case mix look like)."""
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 200_000):
        m = min(200_000, n - start)
        idx = rng.integers(0, len(centers), m)
        block = centers[idx] + spread * rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim) * 4
        out[start:start + m] = block
    return l2_normalize(out)


def latency(index, queries: np.ndarray, k: int) -> tuple[float, float, float]:
    """(p50 ms, p99 ms) of single-query searches on one thread, and batched queries/s on all threads.

    One thread for single queries: OpenMP fan-out of a tiny search only adds barrier waits, which
    on a shared 2-core machine dominate (tens of ms) and would measure the neighbours, not FAISS.
    """
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        index.search(q[None], k)
        times.append((time.perf_counter() - t0) * 1000)
    faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    index.search(queries, k)
    qps = len(queries) / (time.perf_counter() - t0)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), qps


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--kinds", default="flat,ivf,hnsw")
    ap.add_argument("--queries", type=int, default=200, help="held-out queries per size")
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--hnsw-max", type=int, default=200_000, help="skip HNSW above this size (build time)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import faiss

    rng = np.random.default_rng(args.seed)
    centers = rng.standard_normal((args.clusters, args.dim)).astype(np.float32)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    rows = []
    t_all = time.perf_counter()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, dim {args.dim}, "
          f"{args.clusters} clusters, {args.queries} held-out queries, recall@{args.k} vs exact")
    for n in (int(s) for s in args.sizes.split(",")):
        t0 = time.perf_counter()
        base = clustered(n, args.dim, centers, rng)
        queries = clustered(args.queries, args.dim, centers, rng)
        truth = exact_knn(queries, base, args.k)
        print(f"N={n:,}: data + ground truth in {time.perf_counter() - t0:.1f}s", flush=True)
        for kind in kinds:
            if kind == "hnsw" and n > args.hnsw_max:
                rows.append((n, kind, "skipped (build time; --hnsw-max)", float("nan"), float("nan"), float("nan"),
                             float("nan"), float("nan")))
                continue
            t0 = time.perf_counter()
            index, params = make_faiss_index(base, kind, seed=args.seed)
            index.add(base)
            params.update(tune_search(index, base, kind, k=args.k, seed=args.seed))
            build = time.perf_counter() - t0
            _, found = index.search(queries, args.k)
            rec = recall_at_k(found, truth)
            p50, p99, qps = latency(index, queries, args.k)
            knobs = ", ".join(f"{k}={v}" for k, v in params.items() if k != "tuned_recall_at_10")
            rows.append((n, kind, knobs or "exact", build, rec, p50, p99, qps))
            print(f"  {kind:5s} built+tuned in {build:6.1f}s  recall@{args.k}={rec:.3f}  p50={p50:.2f}ms "
                  f"p99={p99:.2f}ms  batch={qps:,.0f} q/s  [{knobs or 'exact'}]", flush=True)
            del index
        del base

    print()
    print(f"| N | kind | params | build+tune s | recall@{args.k} | p50 ms | p99 ms | batched q/s |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for n, kind, knobs, build, rec, p50, p99, qps in rows:
        if np.isnan(build):
            print(f"| {n:,} | {kind} | {knobs} | | | | | |")
        else:
            print(f"| {n:,} | {kind} | {knobs} | {build:.1f} | {rec:.3f} | {p50:.2f} | {p99:.2f} | {qps:,.0f} |")
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s")


if __name__ == "__main__":
    main()
