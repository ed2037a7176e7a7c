"""Torch descriptor networks: backbones, heads, attention modules and their registries."""

from vl_attention.models.descriptor import (build_model, DEFAULT_MODEL, DescriptorModel,
                                            load_model_checkpoint, load_model_config,
                                            model_preset_names, ModelConfig)
from vl_attention.models.outputs import ModelOutput
from vl_attention.models.registry import AGGREGATORS, BACKBONES

__all__ = ['AGGREGATORS', 'BACKBONES', 'DEFAULT_MODEL', 'DescriptorModel', 'ModelConfig',
           'ModelOutput', 'build_model', 'load_model_checkpoint', 'load_model_config',
           'model_preset_names']
