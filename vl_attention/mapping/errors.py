"""The error of a map that cannot be used (its own module so every map module can raise it)."""

from vl_attention.errors import VLAttentionError


class MapFormatError(VLAttentionError, RuntimeError):
    """A map directory is missing, damaged, of an unknown version or of another model."""
