"""Model cards: what travels with an exported model and is checked by maps and the node.

The card records preprocessing, descriptor size and a fingerprint of the
configuration, weights and preprocessing. A map built with one fingerprint
refuses to be searched with descriptors of another. ``preprocessing.resize``
is the policy for frames of another shape (stretch, fit_pad, center_crop).

``outputs`` names the ONNX outputs: ``descriptors`` always, plus
``position_m`` and ``orientation_xyzw`` for models with a pose head
(pose_attention presets). Such a card also says which frame the pose is in
(``pose_frame``) and the map-frame origin the regressed position is relative
to (``pose_origin_m``). Cards written before these fields load as
descriptor-only models.

This module needs no torch: building a card from a torch model
(``make_model_card``, ``weights_sha256``) lives in
:mod:`vl_attention.engine.card_builder`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import json
from pathlib import Path
from typing import Any, TYPE_CHECKING

from vl_attention import __version__
from vl_attention.config import ConfigError, from_dict, to_dict
from vl_attention.engine.preprocess import DEFAULT_RESIZE, Preprocessing
from vl_attention.io import atomic_write_text, StrPath
from vl_attention.model_outputs import DESCRIPTOR_OUTPUT, ORIENTATION_OUTPUT, POSITION_OUTPUT

if TYPE_CHECKING:
    from vl_attention.models.descriptor import ModelConfig

CARD_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelCard:
    """Description of a descriptor model as exported."""

    model_name: str
    fingerprint: str
    descriptor_dim: int
    preprocessing: Preprocessing
    weights_sha256: str
    model_config: dict
    onnx_opset: int = 0
    onnx_sha256: str = ''
    dynamic_size: bool = False
    weights_file: str = ''
    package_version: str = __version__
    format_version: int = CARD_FORMAT_VERSION
    outputs: tuple = (DESCRIPTOR_OUTPUT,)
    pose_frame: str = ''
    pose_origin_m: tuple = ()

    @property
    def has_pose(self) -> bool:
        """Whether the export also outputs a regressed 6-DoF pose."""
        return POSITION_OUTPUT in self.outputs and ORIENTATION_OUTPUT in self.outputs

    def to_json(self) -> str:
        """Serialise to indented JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = 'model card') -> ModelCard:
        """Parse a card written by :meth:`to_json`."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f'{source} is not valid JSON: {error}') from error
        if values.get('format_version') != CARD_FORMAT_VERSION:
            raise ConfigError(f'{source} has format version {values.get("format_version")}, '
                              f'this package reads version {CARD_FORMAT_VERSION}; re-export it')
        return from_dict(cls, values, where=source)

    def save(self, path: StrPath) -> None:
        """Write the card atomically."""
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: StrPath) -> ModelCard:
        """Read a card from ``path``."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f'model card {path} does not exist; export the model first')
        return cls.from_json(path.read_text(), source=str(path))


def needs_map_vocabulary(card: ModelCard) -> bool:
    """Return whether the card's model still has to fit its vocabulary on a map."""
    return card.model_config.get('vocabulary') == 'map'


def card_config_values(config: ModelConfig) -> dict[str, Any]:
    """Return the preset as the card records it, leaving out the defaults of later fields.

    Cards and fingerprints made before the preset had a resize policy or a
    vocabulary source stay the same: those change them only when they are not
    the default (``resize: stretch``, ``vocabulary: preset``).
    """
    values = to_dict(config)
    for name, default in (('resize', DEFAULT_RESIZE), ('vocabulary', 'preset')):
        if values.get(name) == default:
            del values[name]
    return values
