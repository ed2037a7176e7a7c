"""Localization from descriptors: the same Localizer serves the node and the evaluator."""

from vl_attention.localization.localizer import (LocalizationResult, Localizer, LocalizerConfig,
                                                 Neighbour, TrackingConfig)

__all__ = ['LocalizationResult', 'Localizer', 'LocalizerConfig', 'Neighbour', 'TrackingConfig']
