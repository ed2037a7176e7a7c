"""Plots of a bag evaluation: trajectory coloured by error, and error CDFs."""

from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from vl_attention.evaluation.bag_records import BagRun
from vl_attention.evaluation.figures import pyplot, save_figure


def plot_trajectory(run: BagRun, map_positions_enu_m: np.ndarray, path: str | Path, *,
                    title: str) -> None:
    """Map places (grey), ground truth (black line), fixes coloured by error, rejected marked.

    An accepted fix is drawn at its estimate, coloured by its horizontal error;
    a rejected or unanswered frame is an 'x' at its true position.
    """
    records = run.records
    truth = np.array([r.truth.position_enu_m for r in records]).reshape(-1, 3)
    accepted = [r for r in records if r.accepted]
    figure, axes = pyplot.subplots(figsize=(6.5, 5.5))
    axes.scatter(map_positions_enu_m[:, 0], map_positions_enu_m[:, 1], s=4, c='0.8',
                 label='map images')
    axes.plot(truth[:, 0], truth[:, 1], color='black', linewidth=1.0, label='ground truth')
    if accepted:
        estimates = np.array([r.position_enu_m for r in accepted])
        errors_m = np.linalg.norm(estimates[:, :2] - np.array(
            [r.truth.position_enu_m[:2] for r in accepted]), axis=1)
        points = axes.scatter(estimates[:, 0], estimates[:, 1], c=errors_m, s=14, cmap='viridis',
                              vmin=0.0, vmax=max(float(np.percentile(errors_m, 95)), 1e-3),
                              label='accepted fixes')
        figure.colorbar(points, ax=axes, label='horizontal error (m), clipped at p95')
    rejected = np.array([r.truth.position_enu_m for r in records if not r.accepted])
    if len(rejected):
        axes.scatter(rejected[:, 0], rejected[:, 1], marker='x', s=22, c='tab:red',
                     label=f'rejected / no response ({len(rejected)})')
    axes.set(xlabel='east (m)', ylabel='north (m)', title=title, aspect='equal')
    axes.legend(loc='best', fontsize='small')
    axes.grid(alpha=0.3)
    save_figure(figure, path)


def _cdf(axes: Any, values: np.ndarray, label: str) -> None:
    values = np.sort(np.asarray(values, dtype=np.float64))
    fractions = np.arange(1, len(values) + 1) / len(values)
    axes.step(values, fractions, where='post', label=label)


def plot_error_cdf(curves: Sequence[Tuple[str, np.ndarray, Optional[np.ndarray]]],
                   path: str | Path) -> None:
    """Error CDFs of accepted frames, one curve per model.

    ``curves`` is a list of ``(label, position_errors_m, rotation_errors_deg or None)``;
    the rotation panel is drawn only when some curve has rotation errors.
    """
    with_rotation = any(rotation is not None for _, _, rotation in curves)
    figure, panels = pyplot.subplots(1, 2 if with_rotation else 1,
                                     figsize=(10 if with_rotation else 5, 4), squeeze=False)
    for label, position_m, rotation_deg in curves:
        if len(position_m):
            _cdf(panels[0, 0], position_m, label)
        if with_rotation and rotation_deg is not None and len(rotation_deg):
            _cdf(panels[0, 1], rotation_deg, label)
    panels[0, 0].set(xlabel='horizontal position error (m)', ylabel='fraction of accepted frames',
                     xlim=(0, None), ylim=(0, 1.02), title='position error CDF')
    if with_rotation:
        panels[0, 1].set(xlabel='rotation error (deg)', xlim=(0, None), ylim=(0, 1.02),
                         title='rotation error CDF')
    for axes in panels[0]:
        axes.grid(alpha=0.3)
        axes.legend(loc='lower right', fontsize='small')
    save_figure(figure, path)
