"""Map search at scale: build time, memory, latency, throughput and recall per index type.

Usage: ``python -m benchmarks.map_search [--sizes 100000 1000000] [--threads 2]``.

Database descriptors (256-D, unit norm) imitate a city drive: streets are random
walks in a descriptor space whose PCA spectrum falls off as a power law (like
PCA-reduced CNN embeddings), frames along a street are near-duplicates, and
every frame carries structured (same-spectrum) noise. Queries are revisits:
random database frames with fresh appearance noise. The exact flat index is
the reference: Recall@1 = approximate top-1 equals the exact top-1; Recall@10
= share of the exact top-10 found in the approximate top-10. Search goes through
:class:`vl_attention.mapping.MapIndex` (re-ranking against the memory-mapped
descriptors.npy of a saved map, as a loaded map does). Prints a table and
writes JSON to ``benchmarks/results/map_search.json``.
"""

import argparse
import json
import os
from pathlib import Path
import platform
import shutil
import tempfile
import time

import faiss
import numpy as np

from vl_attention.io import atomic_write_text
from vl_attention.mapping.index import IndexParams, MapIndex

DIM = 256
FRAMES_PER_STREET = 500
OUT = Path(__file__).resolve().parent / 'results' / 'map_search.json'


def spectral_basis(rng, dim=DIM, exponent=1.0):
    """Random rotation scaled by a power-law spectrum (std of component i ~ i^-exponent/2)."""
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (rotation * (np.arange(1, dim + 1) ** (-exponent / 2))[None]).astype(np.float32)


def unit(vectors):
    """Normalize rows in place to unit length."""
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def make_database(count, rng, basis):
    """Descriptors of ``count`` frames along streets (random walks), structured noise."""
    database = np.empty((count, DIM), np.float32)
    for street, start in enumerate(range(0, count, FRAMES_PER_STREET)):
        length = min(FRAMES_PER_STREET, count - start)
        origin = rng.standard_normal(DIM).astype(np.float32) @ basis
        walk = np.cumsum(0.08 * rng.standard_normal((length, DIM)).astype(np.float32), axis=0)
        noise = 0.05 * rng.standard_normal((length, DIM)).astype(np.float32)
        database[start:start + length] = origin + (walk + noise) @ basis
    return unit(database)


def make_queries(database, count, rng, basis):
    """Revisits of random database frames under appearance change."""
    picked = database[rng.choice(len(database), count, replace=False)]
    return unit(picked + 0.1 * rng.standard_normal((count, DIM)).astype(np.float32) @ basis)


def rss_bytes():
    """Resident set size of this process."""
    with open('/proc/self/statm') as handle:
        return int(handle.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def build(database, index_type, params, work_dir):
    """Build an index, save descriptors as a map would, reload them memory-mapped."""
    before = rss_bytes()
    started = time.perf_counter()
    index = MapIndex.build(database, index_type, params=params)
    build_s = time.perf_counter() - started
    index_bytes = len(faiss.serialize_index(index.faiss_index))
    path = work_dir / 'descriptors.npy'
    np.save(path, database)
    index.descriptors = np.load(path, mmap_mode='r')   # as load_map does
    return index, {'build_s': build_s, 'index_bytes': index_bytes,
                   'rss_growth_bytes': max(0, rss_bytes() - before)}


def measure(index, queries, exact_top, single_queries):
    """Latency per single query, batched throughput and recall against the exact index."""
    latencies_ms = []
    for query in queries[:single_queries]:
        started = time.perf_counter()
        index.search(query[None], 10)
        latencies_ms.append((time.perf_counter() - started) * 1e3)
    started = time.perf_counter()
    _, top = index.search(queries, 10)
    batch_s = time.perf_counter() - started
    recall_10 = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, exact_top)])
    return {'p50_ms': float(np.percentile(latencies_ms, 50)),
            'p95_ms': float(np.percentile(latencies_ms, 95)),
            'batch_qps': len(queries) / batch_s,
            'recall_at_1': float(np.mean(top[:, 0] == exact_top[:, 0])),
            'recall_at_10': float(recall_10)}


def configurations(count):
    """(label, index type, build params, list of search-param dicts) to try at ``count``."""
    nlist = int(4 * np.sqrt(count))
    return [
        ('flat_ip', 'flat_ip', IndexParams(), [{}]),
        ('hnsw M32', 'hnsw', IndexParams(hnsw_m=32, ef_construction=64),
         [{'ef_search': ef} for ef in (32, 64, 128)]),
        ('ivf_pq 64B', 'ivf_pq', IndexParams(nlist=nlist, pq_bytes=64, train_sample=65536),
         [{'nprobe': nprobe, 'rerank_k': rerank} for nprobe, rerank in
          ((16, 128), (16, 256), (32, 512))]),
    ]


def run_size(count, args, rng, work_dir):
    """All configurations at one database size."""
    basis = spectral_basis(rng)
    database = make_database(count, rng, basis)
    queries = make_queries(database, args.queries, rng, basis)
    rows, exact_top = [], None
    for label, index_type, params, searches in configurations(count):
        index, built = build(database, index_type, params, work_dir)
        if exact_top is None:
            _, exact_top = index.search(queries, 10)
        for search in searches:
            index.with_search_params(**search)
            single = args.single_queries if index_type != 'flat_ip' else 50
            row = {'count': count, 'index': label, 'search': search} | built | \
                measure(index, queries, exact_top, single)
            rows.append(row)
            print(format_row(row), flush=True)
        del index
    return rows


def format_row(row):
    """One table line."""
    search = ','.join(f'{k}={v}' for k, v in row['search'].items()) or '-'
    return (f'{row["count"]:>8} {row["index"]:<11} {search:<22} {row["build_s"]:8.1f} '
            f'{row["index_bytes"] / 2**20:9.1f} {row["rss_growth_bytes"] / 2**20:9.1f} '
            f'{row["p50_ms"]:8.3f} {row["p95_ms"]:8.3f} {row["batch_qps"]:9.0f} '
            f'{row["recall_at_1"]:6.3f} {row["recall_at_10"]:6.3f}')


HEADER = (f'{"N":>8} {"index":<11} {"search":<22} {"build_s":>8} {"index_MiB":>9} '
          f'{"rss_MiB":>9} {"p50_ms":>8} {"p95_ms":>8} {"batch_q/s":>9} {"R@1":>6} {"R@10":>6}')


def main():
    """Run the benchmark, print a table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[100_000, 1_000_000])
    parser.add_argument('--queries', type=int, default=1000)
    parser.add_argument('--single-queries', type=int, default=500)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--out', type=Path, default=OUT)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(HEADER)
    work_dir = Path(tempfile.mkdtemp(prefix='map_search_'))
    try:
        rows = [row for count in args.sizes for row in run_size(count, args, rng, work_dir)]
    finally:
        shutil.rmtree(work_dir)
    result = {'machine': {'cpus': os.cpu_count(), 'faiss_threads': args.threads,
                          'faiss': faiss.__version__, 'numpy': np.__version__,
                          'python': platform.python_version()},
              'dim': DIM, 'queries': args.queries, 'single_queries': args.single_queries,
              'rows': rows}
    atomic_write_text(args.out, json.dumps(result, indent=2) + '\n')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
