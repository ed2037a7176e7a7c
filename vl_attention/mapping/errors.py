"""The errors of maps (their own module so every map module can raise them)."""

from vl_attention.errors import VLAttentionError


class MapFormatError(VLAttentionError, RuntimeError):
    """A map directory is missing, damaged, of an unknown version or of another model."""


class MapBuildError(VLAttentionError, ValueError):
    """The inputs of a map build give no map (no usable frame, or a source that changed)."""
