"""Start-up to first fix and process memory: the map's own ONNX model vs building the preset.

Each variant runs in a fresh interpreter (the runtime's imports are part of
its cost), loads the map, localizes one frame and reports its CPU time, wall
time, peak RSS and whether torch was imported:

* ``map_model``: ``Localizer.from_map(map_dir, backend='onnxruntime')``, the node's path
  now (the map carries ``model/``; torch is never imported);
* ``preset``: the old path, ``create_embedder(EmbedderConfig(model=...))`` then
  ``load_map``: torch, timm and the preset are built, and the export is re-used from
  the cache (``cache_dir`` is warmed first, as on a robot after its first start).

``python benchmarks/startup.py [--map DIR]`` prints a table and writes
benchmarks/results/startup.json. Without ``--map`` it maps the synthetic
``tiny`` world (24 images) once into .cache/bench_startup.
"""

import argparse
import json
from pathlib import Path
import platform
import subprocess
import sys
import tempfile

from vl_attention.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RUNS = 3
PROBE = """
import json, sys, time
import numpy as np


def peak_rss_mb():
    # VmHWM belongs to this exec'd image (ru_maxrss would inherit the parent's peak)
    with open('/proc/self/status') as status:
        line = next(line for line in status if line.startswith('VmHWM:'))
    return int(line.split()[1]) / 1024


started_wall, started_cpu = time.perf_counter(), time.process_time()
variant, map_dir, cache_dir = sys.argv[1:4]
from vl_attention.localization import Localizer
if variant == 'map_model':
    localizer = Localizer.from_map(map_dir, backend='onnxruntime')
else:
    from vl_attention.engine.embedder import create_embedder, EmbedderConfig
    from vl_attention.mapping import load_map, read_manifest
    model = read_manifest(map_dir).model_name
    embedder = create_embedder(EmbedderConfig(model=model, backend='onnxruntime',
                                              cache_dir=cache_dir))
    localizer = Localizer(load_map(map_dir, expected_fingerprint=embedder.fingerprint),
                          embedder=embedder)
result = localizer.localize(np.zeros((240, 320, 3), np.uint8), stamp_s=0.0)
print(json.dumps({'wall_s': time.perf_counter() - started_wall,
                  'cpu_s': time.process_time() - started_cpu,
                  'max_rss_mb': peak_rss_mb(),
                  'torch_imported': 'torch' in sys.modules}))
"""


def tiny_map(work_dir):
    """Map of the synthetic tiny world's day traversal (built once, with its model)."""
    from vl_attention.data.synthetic import generate
    from vl_attention.engine.embedder import create_embedder, EmbedderConfig
    from vl_attention.mapping.builder import build_map_from_folder
    map_dir = Path(work_dir) / 'map'
    if not (map_dir / 'manifest.json').is_file():
        world = generate('tiny', Path(work_dir) / 'world', progress=False)
        embedder = create_embedder(EmbedderConfig(backend='onnxruntime',
                                                  cache_dir=str(Path(work_dir) / 'exports')))
        build_map_from_folder(world / 'map_day' / 'images', world / 'map_day' / 'poses.csv',
                              map_dir, embedder=embedder)
    return map_dir


def run_variant(variant, map_dir, cache_dir):
    """One fresh-interpreter start; returns its JSON report."""
    done = subprocess.run([sys.executable, '-c', PROBE, variant, str(map_dir), str(cache_dir)],
                          capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    """Measure both variants RUNS times; print the medians and their ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--map', type=Path, default=None)
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results' /
                        'startup.json')
    args = parser.parse_args(argv)
    args.map = args.map or tiny_map(ROOT / '.cache' / 'bench_startup')
    with tempfile.TemporaryDirectory() as cache_dir:
        run_variant('preset', args.map, cache_dir)          # warm the export cache
        runs = {variant: [run_variant(variant, args.map, cache_dir) for _ in range(RUNS)]
                for variant in ('map_model', 'preset')}
    medians = {variant: {key: sorted(run[key] for run in items)[RUNS // 2]
                         for key in ('wall_s', 'cpu_s', 'max_rss_mb')}
               | {'torch_imported': items[0]['torch_imported']}
               for variant, items in runs.items()}
    result = {'map': str(args.map), 'runs': RUNS, 'machine': platform.machine(),
              'medians': medians,
              'cpu_ratio_map_model_to_preset': medians['map_model']['cpu_s'] /
              medians['preset']['cpu_s'],
              'rss_ratio_map_model_to_preset': medians['map_model']['max_rss_mb'] /
              medians['preset']['max_rss_mb']}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(f'{"variant":10s} {"wall s":>8s} {"cpu s":>8s} {"RSS MB":>8s}  torch')
    for variant, row in medians.items():
        print(f'{variant:10s} {row["wall_s"]:8.2f} {row["cpu_s"]:8.2f} {row["max_rss_mb"]:8.0f}  '
              f'{row["torch_imported"]}')
    print(f'map_model / preset: CPU {result["cpu_ratio_map_model_to_preset"]:.2f}, RSS '
          f'{result["rss_ratio_map_model_to_preset"]:.2f}')
    return result


if __name__ == '__main__':
    main()
