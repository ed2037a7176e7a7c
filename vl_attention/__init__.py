"""vl_attention: long-term visual localization with attention-based global descriptors."""

__version__ = '0.1.0'
