"""Headless matplotlib and the atomic PNG writer every report plot uses."""

from pathlib import Path
from typing import Any

import matplotlib

from vl_attention.io import atomic_path

matplotlib.use('Agg')
from matplotlib import pyplot  # noqa: E402  (after choosing the headless backend)

__all__ = ['pyplot', 'save_figure']


def save_figure(figure: Any, path: str | Path) -> None:
    """Write a matplotlib figure atomically as PNG."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format='png', dpi=110, bbox_inches='tight')
    pyplot.close(figure)
