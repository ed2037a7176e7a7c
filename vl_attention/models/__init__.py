"""Torch descriptor networks: backbones, aggregators and the registry that names them."""

from vl_attention.models.descriptor import (DEFAULT_MODEL, DescriptorModel, ModelConfig,
                                            build_model, load_model_config)
from vl_attention.models.registry import AGGREGATORS, BACKBONES

__all__ = ['AGGREGATORS', 'BACKBONES', 'DEFAULT_MODEL', 'DescriptorModel', 'ModelConfig',
           'build_model', 'load_model_config']
