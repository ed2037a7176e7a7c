"""The model zoo table: parameters, descriptor size, FLOPs and embed time of every preset.

Usage: ``python -m benchmarks.model_zoo [--models a b] [--threads N]``.

Every preset is built at 480x640 (H x W) with random weights (timing and
FLOPs do not depend on the values). FLOPs are counted by
``torch.utils.flop_counter`` for one image (2 FLOPs per multiply-add;
convolutions, matmuls and RNN cells; pooling and activations are not
counted). Embed time is the inference call alone on a preprocessed batch of
one, timed round-robin between torch eager and ONNX Runtime on the CPU so
machine noise hits both alike, and on CUDA (fp32 and fp16 autocast) when a
GPU is present. Prints a table and writes JSON.
"""

import argparse
import dataclasses
import io
import json
import os
from pathlib import Path
import time
import warnings

import numpy as np
import onnxruntime
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.embed_latency import hardware
from vl_attention.engine.availability import probe_availability
from vl_attention.io import atomic_write_text
from vl_attention.models import build_model, load_model_config, model_preset_names

ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 480, 640


def random_weight_model(name, height=HEIGHT, width=WIDTH):
    """Preset ``name`` at ``height`` x ``width`` with random weights (no files read)."""
    config = load_model_config(name)
    options = dict(config.backbone_options)
    if 'weights' in options:
        options['weights'] = 'none'
    config = dataclasses.replace(config, input_height=height, input_width=width,
                                 backbone_options=options, checkpoint='')
    torch.manual_seed(0)
    return build_model(config).eval(), config


def count_gflops(model, example):
    """Forward FLOPs (2 per multiply-add) of one pass, in GFLOPs."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(example)
    return counter.get_total_flops() / 1e9


def onnx_session(model, example, threads):
    """ONNX Runtime CPU session of the exported model (the export path the node uses)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=17,
                          input_names=['images'], output_names=['descriptors'])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(buffer.getvalue(), options,
                                        providers=['CPUExecutionProvider'])


def time_calls(runners, rounds, budget_s):
    """Milliseconds per call of each runner, interleaved, after one untimed warm-up each."""
    timings = {label: [] for label in runners}
    for run in runners.values():
        run()
    started = time.perf_counter()
    while min(len(t) for t in timings.values()) < rounds:
        if min(len(t) for t in timings.values()) >= 3 and time.perf_counter() - started > budget_s:
            break
        for label, run in runners.items():
            tic = time.perf_counter()
            run()
            timings[label].append((time.perf_counter() - tic) * 1e3)
    return {label: float(np.median(t)) for label, t in timings.items()}


def cuda_runners(model, example):
    """Torch CUDA fp32 and fp16-autocast runners that wait for the GPU to finish."""
    model = model.to('cuda')
    example = example.to('cuda')

    def fp32():
        with torch.no_grad():
            model(example)
        torch.cuda.synchronize()

    def fp16():
        with torch.no_grad(), torch.autocast('cuda', dtype=torch.float16):
            model(example)
        torch.cuda.synchronize()
    return {'torch_cuda_fp32_ms': fp32, 'torch_cuda_fp16_ms': fp16}


def fp16_cosine(model, example):
    """Cosine similarity of the CUDA fp16-autocast descriptor to the fp32 one."""
    with torch.no_grad():
        fp32 = model(example).float()
        with torch.autocast('cuda', dtype=torch.float16):
            fp16 = model(example).float()
    return float(torch.nn.functional.cosine_similarity(fp32, fp16).min())


def bench_preset(name, args, use_cuda):
    """One table row: size, FLOPs and medians of the embed time per runtime."""
    model, config = random_weight_model(name)
    example = torch.randn(1, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(0))
    parameters = sum(p.numel() for p in model.parameters())
    row = {'model': name, 'backbone': config.backbone, 'head': config.aggregator,
           'parameters_m': parameters / 1e6, 'descriptor_dim': model.descriptor_dim(),
           'gflops_480x640': count_gflops(model, example)}
    session = onnx_session(model, example, args.threads)
    feed = {'images': example.numpy()}

    def torch_cpu():
        with torch.no_grad():
            model(example)
    runners = {'torch_cpu_ms': torch_cpu, 'onnxruntime_cpu_ms': lambda: session.run(None, feed)}
    row.update(time_calls(runners, args.rounds, args.budget_s))
    if use_cuda:
        row.update(time_calls(cuda_runners(model, example), args.rounds, args.budget_s))
        row['cuda_fp16_cosine_to_fp32'] = fp16_cosine(model, example.to('cuda'))
    return row


def print_table(rows):
    """Print the rows as a fixed-width table."""
    cuda = any('torch_cuda_fp32_ms' in r for r in rows)
    header = (f'{"model":34} {"params M":>8} {"dim":>6} {"GFLOPs":>7} {"torch ms":>9} '
              f'{"ORT ms":>8}' + (f' {"cuda ms":>8} {"fp16 ms":>8}' if cuda else ''))
    print(header)
    for r in rows:
        line = (f'{r["model"]:34} {r["parameters_m"]:8.2f} {r["descriptor_dim"]:6d} '
                f'{r["gflops_480x640"]:7.1f} {r["torch_cpu_ms"]:9.1f} '
                f'{r["onnxruntime_cpu_ms"]:8.1f}')
        if cuda:
            line += f' {r["torch_cuda_fp32_ms"]:8.2f} {r["torch_cuda_fp16_ms"]:8.2f}'
        print(line)


def main():
    """Run the benchmark over the presets, print a table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=None,
                        help='preset names (default: every preset in config/models)')
    parser.add_argument('--threads', type=int, default=os.cpu_count())
    parser.add_argument('--rounds', type=int, default=10, help='timed calls per runtime (max)')
    parser.add_argument('--budget-s', type=float, default=8.0,
                        help='stop timing a preset after this long (>= 3 calls each)')
    parser.add_argument('--out', type=Path,
                        default=ROOT / 'benchmarks' / 'results' / 'model_zoo.json')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    availability = probe_availability()
    use_cuda = bool(availability.cuda_device)
    started = time.perf_counter()
    rows = [bench_preset(name, args, use_cuda) for name in args.models or model_preset_names()]
    print_table(rows)
    result = {'hardware': hardware(availability, args.threads),
              'settings': {'input': f'{WIDTH}x{HEIGHT}', 'batch': 1, 'rounds': args.rounds,
                           'weights': 'random (timing and FLOPs do not depend on them)',
                           'timing': 'inference call on a preprocessed tensor, median'},
              'results': rows, 'wall_s': time.perf_counter() - started}
    atomic_write_text(args.out, json.dumps(result, indent=2) + '\n')
    print(f'wrote {args.out} in {result["wall_s"]:.0f} s')


if __name__ == '__main__':
    main()
