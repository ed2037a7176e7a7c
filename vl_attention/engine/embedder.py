"""The Embedder: uint8 RGB frames in, L2-normalised float32 descriptors out."""

from __future__ import annotations

from dataclasses import dataclass
import logging
import os
from pathlib import Path
import time
from typing import Iterable, Optional, Sequence, TYPE_CHECKING

import numpy as np

from vl_attention.config import ConfigError
from vl_attention.engine.availability import parse_backend_name
from vl_attention.engine.backend_base import EmbeddingBackend, TorchModelSource
from vl_attention.engine.backends import as_float32, BackendOptions, create_backend
from vl_attention.engine.export_format import ONNX_FILE, read_export
from vl_attention.engine.model_card import ModelCard, needs_map_vocabulary
from vl_attention.engine.preprocess import preprocess_frames
from vl_attention.io import StrPath
from vl_attention.model_outputs import DEFAULT_MODEL

if TYPE_CHECKING:
    from vl_attention.models.descriptor import DescriptorModel, ModelConfig

LOG = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Where exported models are cached (``$VL_ATTENTION_CACHE`` or ~/.cache/vl_attention)."""
    root = os.environ.get('VL_ATTENTION_CACHE') or Path.home() / '.cache' / 'vl_attention'
    return Path(root) / 'exports'


@dataclass(frozen=True)
class EmbedderConfig:
    """Which model runs on which backend, and how.

    ``backend``: ``auto``, ``tensorrt``, ``onnxruntime``, ``torch`` or a
    ``<backend>-<device>`` variant (``torch-cuda``, ``onnxruntime-cpu``).
    ``precision`` (fp32, fp16, int8) applies on the GPU only; ``compile`` and
    ``channels_last`` apply to torch. ``export_dir`` runs a directory written
    by ``vl-attention export`` instead of building ``model``.
    ``calibration_dir`` holds map images for TensorRT INT8 calibration.
    """

    model: str = DEFAULT_MODEL
    backend: str = 'auto'
    threads: int = 0
    batch_size: int = 8
    cache_dir: str = ''
    device: str = 'auto'
    precision: str = 'fp32'
    compile: bool = False
    channels_last: bool = False
    export_dir: str = ''
    calibration_dir: str = ''

    def backend_options(self, cache_dir: StrPath) -> BackendOptions:
        """Options handed to the backend."""
        return BackendOptions(device=self.device, threads=self.threads, precision=self.precision,
                              compile=self.compile, channels_last=self.channels_last,
                              max_batch=self.batch_size,
                              engine_dir=str(Path(cache_dir) / 'tensorrt'),
                              calibration_dir=self.calibration_dir)


class Embedder:
    """Runs preprocessing and one backend; every backend gets identical input."""

    def __init__(self, backend: EmbeddingBackend, card: ModelCard, *, batch_size: int = 8,
                 export_dir: Optional[StrPath] = None,
                 config: Optional[EmbedderConfig] = None) -> None:
        self.backend = backend
        self.card = card
        self.batch_size = batch_size
        self.export_dir = Path(export_dir) if export_dir else None  # model.onnx + card
        # what started it (create_embedder), so a refitted model can run the same way
        self.config = config or EmbedderConfig(model=card.model_name, backend=backend.name,
                                               batch_size=batch_size)
        self.last_latency_ms = 0.0
        # a vocabulary: map model before a map fitted it: warn at its first use
        self._warn_unfitted = needs_map_vocabulary(card)

    @property
    def backend_name(self) -> str:
        """Registry name of the backend that runs the network (tensorrt, onnxruntime, torch)."""
        return self.backend.name

    @property
    def backend_description(self) -> str:
        """One line: backend, device, precision, threads (for logs and diagnostics)."""
        return self.backend.description

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the model (config, weights, preprocessing)."""
        return self.card.fingerprint

    @property
    def descriptor_dim(self) -> int:
        """Length of a descriptor."""
        return self.card.descriptor_dim

    def embed(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Descriptors ``float32 (B, D)`` of a list of uint8 ``(H, W, 3)`` RGB frames."""
        if len(frames) == 0:
            return np.zeros((0, self.descriptor_dim), dtype=np.float32)
        if self._warn_unfitted:
            self._warn_unfitted = False
            LOG.warning('model %s fits its NetVLAD vocabulary on a map, and this one is not '
                        'fitted yet: its descriptors come from seeded random centroids. Build '
                        'a map with it (or use vl_attention.engine.vocabulary.'
                        'fit_map_vocabulary) and embed with the model the map carries',
                        self.card.model_name)
        started = time.perf_counter()
        descriptors = self.backend.run(preprocess_frames(frames, self.card.preprocessing))
        descriptors = as_float32(descriptors)
        self.last_latency_ms = (time.perf_counter() - started) * 1e3
        return descriptors

    def embed_with_pose(self, frames: Sequence[np.ndarray]
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Descriptors and the regressed camera pose of uint8 RGB frames (pose_attention models).

        Returns ``(descriptors float32 (B, D), position_m float64 (B, 3),
        orientation_xyzw float64 (B, 4))``: the camera body pose in the map
        frame of the model's training data (``card.pose_frame``), the
        position with ``card.pose_origin_m`` added, the quaternion unit with
        ``w >= 0``.
        """
        if not self.card.has_pose:
            raise ConfigError(f'model {self.card.model_name} has no pose output; pose_source '
                              'regression needs a pose_attention preset (export one trained on '
                              'the mapped scene)')
        if len(frames) == 0:
            return (np.zeros((0, self.descriptor_dim), np.float32), np.zeros((0, 3)),
                    np.zeros((0, 4)))
        started = time.perf_counter()
        outputs = self.backend.run_outputs(preprocess_frames(frames, self.card.preprocessing))
        descriptors = as_float32(outputs['descriptors'])
        position_m = (np.asarray(outputs['position_m'], np.float64)
                      + np.asarray(self.card.pose_origin_m or (0.0, 0.0, 0.0), np.float64))
        orientation = np.asarray(outputs['orientation_xyzw'], np.float64)
        orientation /= np.maximum(np.linalg.norm(orientation, axis=1, keepdims=True), 1e-12)
        orientation = np.where(orientation[:, 3:] < 0, -orientation, orientation)
        self.last_latency_ms = (time.perf_counter() - started) * 1e3
        return descriptors, position_m, orientation

    def embed_batches(self, frames: Iterable[np.ndarray],
                      batch_size: Optional[int] = None) -> np.ndarray:
        """Embed an iterable of frames in batches (map building), same backend as :meth:`embed`."""
        batch_size = batch_size or self.batch_size
        chunks, batch = [], []
        for frame in frames:
            batch.append(frame)
            if len(batch) == batch_size:
                chunks.append(self.embed(batch))
                batch = []
        if batch:
            chunks.append(self.embed(batch))
        if not chunks:
            return np.zeros((0, self.descriptor_dim), dtype=np.float32)
        return np.concatenate(chunks)


def _needs_onnx(backend: str) -> bool:
    return backend == 'auto' or parse_backend_name(backend)[0] in ('onnxruntime', 'tensorrt')


def _from_export_dir(config: EmbedderConfig
                     ) -> tuple[ModelCard, TorchModelSource, Optional[Path]]:
    export_dir = Path(config.export_dir)
    card = read_export(export_dir)
    if config.model not in (DEFAULT_MODEL, card.model_name):
        raise ConfigError(f'export {export_dir} holds model {card.model_name!r}, not '
                          f'{config.model!r}; leave model unset or name the exported one')
    return card, (lambda: _rebuild_model(card)), export_dir / ONNX_FILE


def _rebuild_model(card: ModelCard) -> DescriptorModel:
    from vl_attention.engine.export import rebuild_model   # torch: only for the torch backend
    return rebuild_model(card)


def _from_preset(config: EmbedderConfig, model: Optional[DescriptorModel], cache_dir: Path,
                 model_config: Optional[ModelConfig] = None
                 ) -> tuple[ModelCard, DescriptorModel, Optional[Path]]:
    # building a preset needs torch; running an export (or a map's model) does not
    from vl_attention.engine.export import cached_export
    from vl_attention.engine.card_builder import make_model_card
    from vl_attention.models import build_model, load_model_config
    model_config = model_config or load_model_config(config.model)
    model = build_model(model_config) if model is None else model.eval()
    card = make_model_card(model_config, model)
    size = (model_config.input_height, model_config.input_width)
    if (card.preprocessing.input_height, card.preprocessing.input_width) != size:
        raise ConfigError(f'the given model takes {card.preprocessing.input_height}x'
                          f'{card.preprocessing.input_width} input, preset {config.model!r} '
                          f'{size[0]}x{size[1]}; build it from the preset')
    onnx_path = None
    if _needs_onnx(config.backend):
        onnx_path = cached_export(model, card, cache_dir) / ONNX_FILE
    return card, model, onnx_path


def create_embedder(config: EmbedderConfig = EmbedderConfig(), *,
                    model: Optional[DescriptorModel] = None,
                    model_config: Optional[ModelConfig] = None) -> Embedder:
    """Start an embedder: export once (cached by fingerprint), then start the backend.

    The network comes from ``config.export_dir`` when set, else from preset
    ``config.model`` (``model`` may pass an already built module of that
    preset, e.g. fresh from training; ``model_config`` the preset as its card
    should record it, e.g. with a fitted vocabulary).
    """
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    torch_model: TorchModelSource
    if config.export_dir:
        card, torch_model, onnx_path = _from_export_dir(config)
    else:
        card, torch_model, onnx_path = _from_preset(config, model, cache_dir, model_config)
    backend = create_backend(config.backend, model=torch_model, onnx_path=onnx_path,
                             options=config.backend_options(cache_dir))
    LOG.info('embedder: model %s (fingerprint %s, %d-D) on %s', card.model_name,
             card.fingerprint, card.descriptor_dim, backend.description)
    return Embedder(backend, card, batch_size=config.batch_size,
                    export_dir=onnx_path.parent if onnx_path is not None else None,
                    config=config)
