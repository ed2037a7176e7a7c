"""Photometric augmentation: copies of training images under random light, colour and haze.

A model trained on one condition (day drives) sees no illumination change
unless the data shows it. Each training image gets ``copies`` extra versions,
each with its own seeded random draw of gamma, gain, contrast, per-channel
colour gain, haze (a blend towards a grey veil), Gaussian blur and sensor
noise; a copy keeps its image's position, so the sampler treats it as one more
view of the place. The transforms are generic photometric changes (no
geometry), applied to uint8 RGB before the model's preprocessing, and drawn
from the seed of (run seed, row, copy) so a run is repeatable.
"""

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from vl_attention.config import ConfigError


@dataclass(frozen=True)
class AugmentationConfig:
    """How many augmented copies per training image, and the ranges they are drawn from."""

    copies: int = 0
    gamma: tuple = (0.5, 2.0)          # I' = I ** gamma (> 1 darkens mid-tones)
    gain: tuple = (0.3, 1.2)
    contrast: tuple = (0.5, 1.3)
    colour_gain: float = 0.15          # per-channel gain in [1 - c, 1 + c]
    haze: tuple = (0.0, 0.5)           # blend weight of a uniform grey veil
    blur_sigma_px: tuple = (0.0, 1.5)
    noise_sigma: float = 6.0           # on the 0..255 scale

    def __post_init__(self) -> None:
        if self.copies < 0:
            raise ConfigError(f'augmentation copies must be >= 0, got {self.copies}')
        for name in ('gamma', 'gain', 'contrast', 'haze', 'blur_sigma_px'):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ConfigError(f'augmentation {name} must be a range 0 <= low <= high, got '
                                  f'{getattr(self, name)}')


def augment(image: npt.NDArray[np.uint8], config: AugmentationConfig,
            seed: int) -> npt.NDArray[np.uint8]:
    """Return a photometrically changed copy of uint8 RGB ``image`` (same seed, same copy)."""
    rng = np.random.default_rng(seed)
    values = image.astype(np.float32) / 255.0
    values = values ** rng.uniform(*config.gamma)
    values = values * rng.uniform(*config.gain)
    values = values * (1.0 + rng.uniform(-1, 1, 3) * config.colour_gain).astype(np.float32)
    mean = values.mean()
    values = (values - mean) * rng.uniform(*config.contrast) + mean
    haze = rng.uniform(*config.haze)
    values = (1.0 - haze) * values + haze * rng.uniform(0.5, 0.9)
    sigma = rng.uniform(*config.blur_sigma_px)
    if sigma > 0.3:
        values = cv2.GaussianBlur(values, (0, 0), sigma)
    values = values + rng.normal(0.0, config.noise_sigma / 255.0, values.shape)
    return (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def copy_seeds(count: int, copies: int, seed: int) -> npt.NDArray[np.int64]:
    """Per expanded row: 0 for the original image, else the seed of its augmented copy.

    Rows are ordered image by image: image i is row ``i * (copies + 1)``,
    followed by its copies.
    """
    seeds = np.zeros((count, copies + 1), np.int64)
    if copies:
        rng = np.random.default_rng([seed, 0xa09])
        seeds[:, 1:] = rng.integers(1, 2**62, size=(count, copies))
    return seeds.reshape(-1)
