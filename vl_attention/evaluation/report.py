"""Reports: ``metrics.json`` (atomic), ``report.md`` and PNG plots."""

import datetime
import importlib.metadata
import json
from pathlib import Path
import platform
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from vl_attention import __version__
from vl_attention.evaluation.bag_records import horizontal_errors, rotation_errors_deg
from vl_attention.evaluation.figures import pyplot, save_figure
from vl_attention.evaluation.trajectory_plots import plot_error_cdf, plot_trajectory
from vl_attention.evaluation.vpr_dataset import VPRDataset
from vl_attention.io import atomic_write_bytes, atomic_write_text, json_safe, make_directory

SOFTWARE = ('torch', 'onnxruntime', 'faiss-cpu', 'numpy', 'opencv-python-headless')


def software_versions() -> Dict[str, Optional[str]]:
    """Versions of the package and the libraries that produce the numbers."""
    versions: Dict[str, Optional[str]] = {'vl_attention': __version__,
                                          'python': platform.python_version()}
    for name in SOFTWARE:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def plot_pr_curves(runs: Sequence[Tuple[Dict[str, Any], Dict[str, Any]]], path: Path) -> None:
    """Ratio-test precision-recall curve of each model."""
    figure, axes = pyplot.subplots(figsize=(5, 4))
    for result, plots in runs:
        axes.plot(plots['recall'], plots['precision'], drawstyle='steps-post',
                  label=f'{result["model"]} (AUC {result["pr_auc"]:.3f})')
    axes.set(xlabel='recall', ylabel='precision', xlim=(0, 1), ylim=(0, 1.02),
             title='precision-recall (ratio test)')
    axes.legend(loc='lower left')
    axes.grid(alpha=0.3)
    save_figure(figure, path)


def plot_recall_at_n(runs: Sequence[Tuple[Dict[str, Any], Dict[str, Any]]], path: Path) -> None:
    """Recall@N curve of each model."""
    figure, axes = pyplot.subplots(figsize=(5, 4))
    for result, _ in runs:
        n_values = [int(n) for n in result['recall_at_n']]
        axes.plot(n_values, list(result['recall_at_n'].values()), marker='o',
                  label=result['model'])
    axes.set(xlabel='N', ylabel='Recall@N', ylim=(0, 1.02), xscale='log', title='Recall@N')
    axes.legend(loc='lower right')
    axes.grid(alpha=0.3)
    save_figure(figure, path)


def example_strip(dataset: VPRDataset, plots: Dict[str, Any], path: Path, examples: int,
                  top: int = 3, height: int = 96) -> None:
    """Strip of example queries (left) and their top matches; green = positive, red = not."""
    rows: List[np.ndarray] = []
    chosen = np.linspace(0, len(dataset.query_images) - 1, num=min(examples,
                                                                   len(dataset.query_images)))
    for query in chosen.astype(int):
        tiles = [_tile(dataset.query_images[query], height, (255, 255, 255))]
        for index in plots['indices'][query, :top]:
            colour = (0, 200, 0) if index in dataset.positives[query] else (0, 0, 220)
            tiles.append(_tile(dataset.database_images[index], height, colour))
        rows.append(np.hstack(tiles))
    width = max(row.shape[1] for row in rows)
    strip = np.vstack([np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)))
                       for row in rows])
    atomic_write_bytes(path, cv2.imencode('.png', strip)[1].tobytes())


def _tile(image_path: Path, height: int, colour_bgr: Tuple[int, int, int]) -> np.ndarray:
    image: Any = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    bordered: np.ndarray = cv2.copyMakeBorder(image, 3, 3, 3, 3, cv2.BORDER_CONSTANT,
                                              value=colour_bgr)
    return bordered


def markdown_table(results: Sequence[Dict[str, Any]]) -> str:
    """One row per model: Recall@N, PR-AUC, Recall@100%P, timings."""
    n_values = list(results[0]['recall_at_n'])
    header = ['model', 'D'] + [f'R@{n}' for n in n_values] + \
        ['PR-AUC', 'R@100%P', 'embed ms/img', 'search ms/query']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for result in results:
        cells = [result['model'], str(result['descriptor_dim'])]
        cells += [f'{value:.3f}' for value in result['recall_at_n'].values()]
        cells += [f'{result["pr_auc"]:.3f}', f'{result["recall_at_100_precision"]:.3f}',
                  f'{result["embed_ms_per_image"]:.1f}', f'{result["search_ms_per_query"]:.3f}']
        lines.append('| ' + ' | '.join(cells) + ' |')
    sequences = [(r['model'], r['sequence']) for r in results if 'sequence' in r]
    if sequences:
        lines += ['', '| model | single-frame R@1 | filtered R@1 | fixes | fix precision |',
                  '|---|---|---|---|---|']
        lines += [f'| {model} | {row["single_frame_recall_at_1"]:.3f} | '
                  f'{row["filtered_recall_at_1"]:.3f} | {row["tracking_fraction"]:.3f} | '
                  f'{_number(row["fix_precision"], 3)} |' for model, row in sequences]
    return '\n'.join(lines)


def write_vpr_report(out_dir: str | Path, dataset: VPRDataset,
                     runs: Sequence[Tuple[Dict[str, Any], Dict[str, Any]]], *,
                     examples: int = 5) -> Path:
    """Write metrics.json, report.md, pr_curve.png, recall_at_n.png, examples.png."""
    out_dir = make_directory(out_dir, 'report directory')
    results = [result for result, _ in runs]
    plot_pr_curves(runs, out_dir / 'pr_curve.png')
    plot_recall_at_n(runs, out_dir / 'recall_at_n.png')
    example_strip(dataset, runs[0][1], out_dir / 'examples.png', examples)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat()
    document = {'dataset': dataset.describe(), 'runs': results, 'software': software_versions(),
                'created_utc': created}
    atomic_write_text(out_dir / 'metrics.json', json.dumps(document, indent=2))
    atomic_write_text(out_dir / 'report.md', '\n'.join([
        f'# Place recognition on `{dataset.root.name}`', '',
        f'{len(dataset.query_images)} queries, {len(dataset.database_images)} database images; '
        f'ground truth: {dataset.ground_truth}.', '', markdown_table(results), '',
        '![precision-recall](pr_curve.png) ![Recall@N](recall_at_n.png)', '',
        f'Examples ({runs[0][0]["model"]}): query, then its top matches; green = positive, '
        'red = not.', '', '![examples](examples.png)', '']))
    return out_dir


def _number(value: Optional[float], digits: int = 2) -> str:
    return 'n/a' if value is None else f'{value:.{digits}f}'


def bag_markdown_table(results: Sequence[Dict[str, Any]]) -> str:
    """One row per model: acceptance, errors, fractions within, covariance honesty, latency."""
    within_keys = list(results[0]['fraction_of_frames_within'])
    header = ['model', 'frames', 'accepted', 'median m', 'mean m', 'p95 m', 'median deg'] + \
        [f'<= {key}' for key in within_keys] + ['in 95% ellipse', 'NEES (2)',
                                                'latency p50/p95 ms', 'Hz']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for result in results:
        pose = result['accepted'] or {}
        honesty = result['covariance_honesty'] or {}
        latency = result['latency'] or {}
        cells = [result['model'], str(result['frames_scored']),
                 f'{result["acceptance_rate"]:.3f}', _number(pose.get('position_median_m')),
                 _number(pose.get('position_mean_m')), _number(pose.get('position_p95_m')),
                 _number(pose.get('rotation_median_deg'))]
        cells += [f'{result["fraction_of_frames_within"][key]:.3f}' for key in within_keys]
        cells += [_number(honesty.get('inside_ellipse_fraction'), 3),
                  _number(honesty.get('nees_mean')),
                  f'{_number(latency.get("latency_p50_ms"), 1)} / '
                  f'{_number(latency.get("latency_p95_ms"), 1)}',
                  _number(latency.get('throughput_hz'), 1)]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def mode_markdown_table(results: Sequence[Dict[str, Any]]) -> str:
    """One row per model and estimate: single frame, filtered and the published output."""
    rows = [(result['model'], mode, summary) for result in results
            for mode, summary in result.get('modes', {}).items()]
    if not rows:
        return ''
    within_keys = list(dict.fromkeys(key for _, _, summary in rows
                                     for key in summary['fraction_of_frames_within']))
    header = ['model', 'estimate', 'fixes', 'median m', 'p95 m'] + \
        [f'<= {key}' for key in within_keys] + ['in 95% ellipse', 'NEES (2)']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for model, mode, summary in rows:
        pose = summary['accepted'] or {}
        honesty = summary['covariance_honesty'] or {}
        cells = [model, mode, f'{summary["acceptance_rate"]:.3f}',
                 _number(pose.get('position_median_m')), _number(pose.get('position_p95_m'))]
        cells += [_number(summary['fraction_of_frames_within'].get(key), 3)
                  for key in within_keys]
        cells += [_number(honesty.get('inside_ellipse_fraction'), 3),
                  _number(honesty.get('nees_mean'))]
        lines.append('| ' + ' | '.join(cells) + ' |')
    note = ('The same frames through each stage: `single_frame` (retrieval alone), '
            '`filtered` (the place filter), `output` (after PnP refinement: what the node '
            'publishes).')
    return '\n'.join(lines + ['', note, ''])


def _bag_notes(result: Dict[str, Any]) -> List[str]:
    notes = [f'* `{result["model"]}` ({result["mode"]}, {result.get("backend", "")}): ground '
             f'truth {result["ground_truth"]["type"]} on `{result["ground_truth"]["topic"]}`, '
             f'{result["ground_truth"]["frame"]}; frames without ground truth: '
             f'{sum(result["frames_skipped_without_ground_truth"].values())} '
             f'{result["frames_skipped_without_ground_truth"] or ""}']
    if result['mode'] == 'realtime':
        notes.append(f'  realtime: {result["frames_published"]} frames published at '
                     f'{result["rate"]:g}x recorded speed, {result["frames_without_response"]} '
                     f'without a response, node dropped {result["node_frames_dropped"]}')
    return notes


def write_bag_report(out_dir: str | Path, description: Dict[str, Any],
                     runs: Sequence[Any]) -> Path:
    """Write metrics.json, report.md, trajectory_<model>.png and error_cdf.png.

    ``runs`` holds ``(result, BagRun, Map)`` per model (see ``evaluate_bag``).
    """
    out_dir = Path(out_dir)
    results, curves, images = [result for result, _, _ in runs], [], []
    for result, run, map_ in runs:
        name = Path(result['model']).stem
        plot_trajectory(run, map_.records.position_enu_m, out_dir / f'trajectory_{name}.png',
                        title=f'{result["model"]} ({result["mode"]})')
        images.append(f'![trajectory {name}](trajectory_{name}.png)')
        for mode, records in (run.modes or {'': run.records}).items():
            accepted = [r for r in records if r.accepted]
            curves.append((f'{result["model"]} {mode}'.strip(),
                           np.linalg.norm(horizontal_errors(accepted), axis=1),
                           rotation_errors_deg(accepted) if accepted else None))
    plot_error_cdf(curves, out_dir / 'error_cdf.png')
    created = datetime.datetime.now(datetime.timezone.utc).isoformat()
    document = {'evaluation': description, 'runs': results, 'software': software_versions(),
                'created_utc': created}
    atomic_write_text(out_dir / 'metrics.json', json.dumps(json_safe(document), indent=2))
    atomic_write_text(out_dir / 'report.md', '\n'.join([
        f'# Localization on {len(description["bags"])} bag(s) ({description["mode"]})', '',
        f'Bags: {", ".join(f"`{Path(b).name}`" for b in description["bags"])}; images '
        f'`{description["image_topic"]}`.', '',
        bag_markdown_table(results), '', mode_markdown_table(results),
        'Errors are horizontal, over accepted frames (confidence >= min_confidence); the '
        '`<=` columns count accepted frames within the bound over all frames with ground '
        'truth (rejected frames are failures). NEES should be near 2, the ellipse fraction '
        'near 0.95.', ''] + [note for result in results for note in _bag_notes(result)] + [
        '', ' '.join(images), '', '![error CDF](error_cdf.png)', '']))
    return out_dir
