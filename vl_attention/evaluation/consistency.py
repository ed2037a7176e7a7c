"""Is the reported covariance honest? 2-D NEES and the 95% ellipse on horizontal errors.

For a consistent estimator the normalised estimation error squared
``e^T P^-1 e`` of 2-D errors follows a chi-square law with 2 degrees of
freedom: its mean is 2 and 95% of errors fall inside the ellipse
``e^T P^-1 e <= 5.991``. A mean far above 2 means overconfidence.
"""

from typing import Sequence

import numpy as np

CHI2_2DOF_95 = 5.991464547107979


def nees_2d(errors_m: np.ndarray, covariances_m2: np.ndarray) -> np.ndarray:
    """Per-sample ``e^T P^-1 e`` of horizontal errors ``(N, 2)`` with covariances ``(N, 2, 2)``."""
    errors = np.asarray(errors_m, np.float64).reshape(-1, 2)
    covariances = np.asarray(covariances_m2, np.float64).reshape(-1, 2, 2)
    if len(errors) == 0:
        return np.zeros(0)
    solved = np.linalg.solve(covariances, errors[..., None])[..., 0]
    return np.einsum('ij,ij->i', errors, solved)


def consistency_summary(errors_m: Sequence, covariances_m2: Sequence) -> dict:
    """Fraction inside the 95% ellipse and mean / median NEES (NaN when there are no samples)."""
    nees = nees_2d(np.asarray(errors_m), np.asarray(covariances_m2))
    if len(nees) == 0:
        return {'samples': 0, 'inside_95_ellipse': float('nan'), 'mean_nees_2d': float('nan'),
                'median_nees_2d': float('nan')}
    return {'samples': int(len(nees)), 'inside_95_ellipse': float(np.mean(nees <= CHI2_2DOF_95)),
            'mean_nees_2d': float(np.mean(nees)), 'median_nees_2d': float(np.median(nees))}
