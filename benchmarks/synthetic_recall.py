"""Recall@N of the default descriptor on the synthetic world: day map vs night / fog queries.

Renders the traversals of a synthetic-world preset in memory (every ``--stride``-th
frame), embeds them with the default model on ONNX Runtime, and reports, per query
condition, Recall@1/@5 within ``--positive-distance-m`` of the ground truth, next to
chance (the expected Recall@1 of a random database pick).

    python benchmarks/synthetic_recall.py --preset benchmark --stride 5
"""

import argparse
import json
import os
from pathlib import Path
import platform
import time

import numpy as np

from vl_attention.data.synthetic import get_condition, get_preset, place_occluders
from vl_attention.data.synthetic import generate_town, plan_traversal, render
from vl_attention.data.synthetic.presets import frame_seed
from vl_attention.engine.embedder import create_embedder, EmbedderConfig
from vl_attention.io import atomic_write_text


def render_strided(preset, index, spec, town, stride):
    """Render every ``stride``-th frame of one traversal; return frames and ENU positions."""
    traversal = plan_traversal(town, spec.traversal)
    condition = get_condition(spec.condition, occluder_density=spec.occluder_density)
    occluders = place_occluders(town, spec.occluder_density, preset.seed * 1000 + index)
    camera = preset.camera()
    frames, positions = [], []
    for k in range(0, len(traversal), stride):
        frames.append(render(town, camera, traversal.positions_enu_m[k],
                             traversal.quaternions_xyzw[k], condition,
                             frame_seed(preset.seed, index, k), occluders=occluders))
        positions.append(traversal.positions_enu_m[k])
    return frames, np.asarray(positions)


def recall_at(similarity, database_xy, query_xy, radius_m, n_values=(1, 5, 10)):
    """Recall@N: fraction of queries with a database image within ``radius_m`` in the top N."""
    order = np.argsort(-similarity, axis=1)
    distances = np.linalg.norm(query_xy[:, None, :] - database_xy[None, :, :], axis=2)
    positive = distances <= radius_m
    hits = np.take_along_axis(positive, order, axis=1)
    chance = float(positive.mean())
    return {f'recall_at_{n}': float(hits[:, :n].any(axis=1).mean()) for n in n_values}, chance


def main():
    """Run the benchmark, print a table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--preset', default='benchmark')
    parser.add_argument('--stride', type=int, default=5, help='render every n-th frame')
    parser.add_argument('--positive-distance-m', type=float, default=25.0)
    parser.add_argument('--out', type=Path,
                        default=Path(__file__).parent / 'results' / 'synthetic_recall.json')
    args = parser.parse_args()
    preset = get_preset(args.preset)
    town = generate_town(preset.seed, preset.town)
    embedder = create_embedder(EmbedderConfig(backend='onnxruntime'))
    embedded = {}
    for index, spec in enumerate(preset.traversals):
        started = time.perf_counter()
        frames, positions = render_strided(preset, index, spec, town, args.stride)
        render_s = time.perf_counter() - started
        descriptors = embedder.embed_batches(frames)
        embedded[spec.name] = (descriptors, positions[:, :2], spec.condition,
                               spec.occluder_density)
        print(f'{spec.name}: {len(frames)} frames, render {render_s:.0f} s, '
              f'embed {time.perf_counter() - started - render_s:.0f} s')
    database, database_xy = embedded[preset.traversals[0].name][:2]
    rows = []
    for name, (descriptors, query_xy, condition, occluders) in list(embedded.items())[1:]:
        recalls, chance = recall_at(descriptors @ database.T, database_xy, query_xy,
                                    args.positive_distance_m)
        rows.append({'query': name, 'condition': condition, 'occluder_density': occluders,
                     'queries': len(descriptors), 'database': len(database),
                     **recalls, 'chance_recall_at_1': chance})
    print(f'\nday map vs queries, positives within {args.positive_distance_m:.0f} m '
          f'(model {embedder.card.model_name}, {embedder.descriptor_dim}-D)')
    print(f'{"query":14s} {"condition":10s} {"R@1":>6s} {"R@5":>6s} {"R@10":>6s} {"chance":>7s}')
    for row in rows:
        print(f'{row["query"]:14s} {row["condition"]:10s} {row["recall_at_1"]:6.3f} '
              f'{row["recall_at_5"]:6.3f} {row["recall_at_10"]:6.3f} '
              f'{row["chance_recall_at_1"]:7.4f}')
    report = {'preset': args.preset, 'stride': args.stride,
              'positive_distance_m': args.positive_distance_m,
              'model': embedder.card.model_name, 'fingerprint': embedder.fingerprint,
              'cpu_count': os.cpu_count(), 'machine': platform.processor() or platform.machine(),
              'results': rows}
    atomic_write_text(args.out, json.dumps(report, indent=2))
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
