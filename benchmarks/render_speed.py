"""Render speed of the synthetic world at 320x240: frames/s for day, night and fog+occluders.

Usage: ``python benchmarks/render_speed.py [--frames 100] [--out results.json]``.
Renders consecutive frames of the demo preset's map traversal (a street view),
prints a table and writes JSON with the machine's CPU count and numpy version.
"""

import argparse
import json
import os
from pathlib import Path
import platform
import time

import numpy as np

from vl_attention.data.synthetic import (
    generate_town, get_condition, get_preset, place_occluders, plan_traversal, render)
from vl_attention.io import atomic_write_text

CASES = (('day', 'day', 0.0), ('night', 'night', 0.0), ('fog+occluders', 'fog', 0.5))


def time_case(town, camera, traversal, condition, occluders, frames):
    """Mean frames/s and per-frame milliseconds (median, p95) over consecutive frames."""
    render(town, camera, traversal.positions_enu_m[0], traversal.quaternions_xyzw[0],
           condition, 0, occluders=occluders)
    durations_ms = []
    for k in range(frames):
        start = time.perf_counter()
        render(town, camera, traversal.positions_enu_m[k], traversal.quaternions_xyzw[k],
               condition, k, occluders=occluders)
        durations_ms.append(1e3 * (time.perf_counter() - start))
    durations_ms = np.array(durations_ms)
    return {'fps': 1e3 / durations_ms.mean(), 'median_ms': float(np.median(durations_ms)),
            'p95_ms': float(np.percentile(durations_ms, 95)), 'frames': frames}


def main():
    """Run the benchmark, print a table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=100)
    parser.add_argument('--out', type=Path, default=Path('benchmarks/results/render_speed.json'))
    args = parser.parse_args()
    preset = get_preset('demo')
    camera = preset.camera()
    town = generate_town(preset.seed, preset.town)
    traversal = plan_traversal(town, preset.traversals[0].traversal)
    results = {}
    for label, condition_name, density in CASES:
        occluders = place_occluders(town, density, seed=1) if density > 0 else None
        results[label] = time_case(town, camera, traversal, get_condition(condition_name),
                                   occluders, min(args.frames, len(traversal)))
    print(f'{"condition":<16}{"fps":>8}{"median ms":>12}{"p95 ms":>10}')
    for label, row in results.items():
        print(f'{label:<16}{row["fps"]:>8.1f}{row["median_ms"]:>12.1f}{row["p95_ms"]:>10.1f}')
    report = {'benchmark': 'synthetic_render_speed', 'preset': 'demo',
              'width': camera.width, 'height': camera.height, 'quads': len(town.quads),
              'cpu_count': os.cpu_count(), 'numpy_version': np.__version__,
              'python_version': platform.python_version(), 'machine': platform.machine(),
              'results': results}
    atomic_write_text(args.out, json.dumps(report, indent=2) + '\n')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
