"""Per-frame embedding latency of every available backend at the node's resolution.

Usage: ``python -m benchmarks.embed_latency [--threads N] [--compile]``.

For each model (the default and a heavy one) and batch size (1, 8) all
available backend variants are timed round-robin on the same real frames
(Gardens Point day queries resized to the model's input size), so machine
noise hits them alike. Each timing is ``Embedder.embed`` end to end:
preprocessing, inference, copies. Prints a table and the ONNX Runtime vs
torch eager speed-up; writes JSON with hardware, threads and library versions.
"""

import argparse
import dataclasses
import json
import os
from pathlib import Path
import platform
import tempfile
import time

import cv2
import numpy as np
import torch

from vl_attention.engine.availability import probe_availability
from vl_attention.engine.embedder import create_embedder, EmbedderConfig
from vl_attention.engine.preprocess import preprocess_frames
from vl_attention.io import atomic_write_text
from vl_attention.models import build_model, DEFAULT_MODEL, load_model_config

ROOT = Path(__file__).resolve().parents[1]
FRAMES_DIR = ROOT.parent / 'shared' / 'data' / 'gardenspoint_day_night_sample' / 'queries'
HEAVY_MODEL = 'resnet50_gem'


def variants(availability, compile_torch):
    """``(label, EmbedderConfig overrides)`` of every backend variant this machine can run."""
    rows = [('torch-cpu eager', {'backend': 'torch-cpu'}),
            ('torch-cpu channels-last', {'backend': 'torch-cpu', 'channels_last': True})]
    if compile_torch:
        rows.append(('torch-cpu compiled', {'backend': 'torch-cpu', 'compile': True}))
    rows.append(('onnxruntime-cpu', {'backend': 'onnxruntime-cpu'}))
    if availability.cuda_device:
        rows += [('torch-cuda fp32', {'backend': 'torch-cuda'}),
                 ('torch-cuda fp16', {'backend': 'torch-cuda', 'precision': 'fp16',
                                      'channels_last': True})]
        if 'CUDAExecutionProvider' in availability.onnxruntime_providers:
            rows.append(('onnxruntime-cuda', {'backend': 'onnxruntime-cuda'}))
        if availability.tensorrt_version:
            rows += [('tensorrt fp32', {'backend': 'tensorrt'}),
                     ('tensorrt fp16', {'backend': 'tensorrt', 'precision': 'fp16'})]
    return rows


def load_frames(height, width, count=8):
    """Real frames at the model's input size (synthetic noise if the shared data is absent)."""
    paths = sorted(FRAMES_DIR.glob('*.jpg'))[:count]
    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    if not frames:
        frames = list(np.random.default_rng(0).integers(0, 256, (count, 480, 640, 3), np.uint8))
    frames = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames]
    return (frames * count)[:count]


def time_round_robin(embedders, frames, rounds, budget_s, block=5):
    """Call milliseconds per embedder, in interleaved blocks; stops after ``budget_s``.

    Each block starts with one untimed call: ONNX Runtime's worker threads
    keep spinning briefly after a run and would otherwise slow the next
    backend's first call.
    """
    timings = {label: [] for label in embedders}
    started = time.perf_counter()
    while min(len(t) for t in timings.values()) < rounds:
        if min(len(t) for t in timings.values()) >= 5 and time.perf_counter() - started > budget_s:
            break
        for label, embedder in embedders.items():
            embedder.embed(frames)
            for _ in range(block):
                tic = time.perf_counter()
                embedder.embed(frames)
                timings[label].append((time.perf_counter() - tic) * 1e3)
    return timings


def summarise(call_ms, batch):
    """p50/p95 per frame and frames/s from per-call milliseconds."""
    per_frame = np.asarray(call_ms) / batch
    return {'p50_ms_per_frame': float(np.percentile(per_frame, 50)),
            'p95_ms_per_frame': float(np.percentile(per_frame, 95)),
            'frames_per_s': float(1e3 / per_frame.mean()), 'calls': len(per_frame)}


def preprocessing_ms(frames, preprocessing, repeats=20):
    """Median milliseconds per frame of preprocessing alone (shared by all backends)."""
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        preprocess_frames(frames, preprocessing)
        times.append((time.perf_counter() - tic) * 1e3 / len(frames))
    return float(np.median(times))


def bench_model(name, args, availability, cache_dir):
    """Time every variant x batch size for one model; return result rows."""
    torch.manual_seed(0)
    model = build_model(load_model_config(name))
    base = EmbedderConfig(model=name, threads=args.threads, cache_dir=cache_dir)
    embedders = {label: create_embedder(dataclasses.replace(base, **overrides), model=model)
                 for label, overrides in variants(availability, args.compile)}
    prep = next(iter(embedders.values())).card.preprocessing
    rows = []
    for batch in args.batches:
        frames = load_frames(prep.input_height, prep.input_width, batch)
        timings = time_round_robin(embedders, frames, args.rounds, args.budget_s)
        pre_ms = preprocessing_ms(frames, prep)
        for label, call_ms in timings.items():
            rows.append({'model': name, 'backend': label, 'batch': batch,
                         'input': f'{prep.input_width}x{prep.input_height}',
                         'description': embedders[label].backend_description,
                         'preprocess_ms_per_frame': pre_ms, **summarise(call_ms, batch)})
    return rows


def speedups(rows):
    """ONNX Runtime CPU vs torch eager CPU: ratio of p50 per-frame latency, per model x batch."""
    table = {(r['model'], r['batch'], r['backend']): r['p50_ms_per_frame'] for r in rows}
    return [{'model': model, 'batch': batch,
             'ort_vs_torch_eager': table[(model, batch, 'torch-cpu eager')] / ort}
            for (model, batch, backend), ort in table.items() if backend == 'onnxruntime-cpu']


def hardware(availability, threads):
    """CPU model, core count, threads, GPU and library versions."""
    cpu = platform.processor()
    cpuinfo = Path('/proc/cpuinfo')
    if cpuinfo.is_file():
        names = [line.split(':', 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith('model name')]
        cpu = names[0] if names else cpu
    import onnxruntime
    return {'cpu': cpu, 'cpu_count': os.cpu_count(), 'threads': threads,
            'torch_threads': torch.get_num_threads(), 'gpu': availability.cuda_device or None,
            'no_gpu_reason': availability.cuda_reason or None,
            'tensorrt': availability.tensorrt_version or availability.tensorrt_reason,
            'python': platform.python_version(), 'torch': torch.__version__,
            'onnxruntime': onnxruntime.__version__, 'numpy': np.__version__,
            'opencv': cv2.__version__, 'platform': platform.platform()}


def print_table(rows, ratios):
    """Print the results as a fixed-width table."""
    print(f'{"model":18} {"backend":24} {"batch":>5} {"p50 ms":>8} {"p95 ms":>8} '
          f'{"frames/s":>9} {"prep ms":>8}')
    for r in rows:
        print(f'{r["model"]:18} {r["backend"]:24} {r["batch"]:5d} {r["p50_ms_per_frame"]:8.2f} '
              f'{r["p95_ms_per_frame"]:8.2f} {r["frames_per_s"]:9.1f} '
              f'{r["preprocess_ms_per_frame"]:8.2f}')
    for r in ratios:
        print(f'onnxruntime-cpu vs torch-cpu eager, {r["model"]} batch {r["batch"]}: '
              f'{r["ort_vs_torch_eager"]:.2f}x faster (p50 per frame)')


def main():
    """Run the benchmark, print a table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=[DEFAULT_MODEL, HEAVY_MODEL])
    parser.add_argument('--batches', nargs='+', type=int, default=[1, 8])
    parser.add_argument('--threads', type=int, default=os.cpu_count())
    parser.add_argument('--rounds', type=int, default=30, help='timed calls per variant (max)')
    parser.add_argument('--budget-s', type=float, default=10.0,
                        help='stop a model x batch group after this long (>= 5 rounds)')
    parser.add_argument('--compile', action='store_true', help='also time torch.compile')
    parser.add_argument('--out', type=Path,
                        default=ROOT / 'benchmarks' / 'results' / 'embed_latency.json')
    args = parser.parse_args()
    availability = probe_availability()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache_dir:
        rows = [row for name in args.models
                for row in bench_model(name, args, availability, cache_dir)]
    ratios = speedups(rows)
    print_table(rows, ratios)
    result = {'hardware': hardware(availability, args.threads),
              'settings': {'rounds': args.rounds, 'budget_s': args.budget_s,
                           'frames': 'Gardens Point day queries at the model input size',
                           'timing': 'Embedder.embed end to end (preprocess + infer + copy)'},
              'results': rows, 'ort_vs_torch_eager': ratios,
              'wall_s': time.perf_counter() - started}
    atomic_write_text(args.out, json.dumps(result, indent=2) + '\n')
    print(f'wrote {args.out} in {result["wall_s"]:.0f} s')


if __name__ == '__main__':
    main()
