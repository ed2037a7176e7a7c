"""Name -> factory registries for backbones and aggregators (timm's create_model pattern).

Configs name registered components; they never hold import paths.
"""

from vl_attention.registry import Registry

__all__ = ['AGGREGATORS', 'BACKBONES', 'Registry']

BACKBONES = Registry('backbone')
AGGREGATORS = Registry('aggregator')
