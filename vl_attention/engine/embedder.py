"""The Embedder: uint8 RGB frames in, L2-normalised float32 descriptors out."""

from dataclasses import dataclass
import logging
import os
from pathlib import Path
import time

import numpy as np

from vl_attention.engine.backends import create_backend
from vl_attention.engine.export import cached_export, ONNX_FILE
from vl_attention.engine.model_card import make_model_card
from vl_attention.engine.preprocess import preprocess_frames
from vl_attention.models import build_model, DEFAULT_MODEL, load_model_config

LOG = logging.getLogger(__name__)


def default_cache_dir():
    """Where exported models are cached (``$VL_ATTENTION_CACHE`` or ~/.cache/vl_attention)."""
    root = os.environ.get('VL_ATTENTION_CACHE') or Path.home() / '.cache' / 'vl_attention'
    return Path(root) / 'exports'


@dataclass(frozen=True)
class EmbedderConfig:
    """Which model runs on which backend."""

    model: str = DEFAULT_MODEL
    backend: str = 'auto'
    threads: int = 0
    batch_size: int = 8
    cache_dir: str = ''


class Embedder:
    """Runs preprocessing and one backend; every backend gets identical input."""

    def __init__(self, backend, card):
        self.backend = backend
        self.card = card
        self.last_latency_ms = 0.0

    @property
    def backend_name(self):
        """Name of the backend that runs the network."""
        return self.backend.name

    @property
    def fingerprint(self):
        """Fingerprint of the model (config, weights, preprocessing)."""
        return self.card.fingerprint

    @property
    def descriptor_dim(self):
        """Length of a descriptor."""
        return self.card.descriptor_dim

    def embed(self, frames):
        """Descriptors ``float32 (B, D)`` of a list of uint8 ``(H, W, 3)`` RGB frames."""
        if len(frames) == 0:
            return np.zeros((0, self.descriptor_dim), dtype=np.float32)
        started = time.perf_counter()
        descriptors = self.backend.run(preprocess_frames(frames, self.card.preprocessing))
        self.last_latency_ms = (time.perf_counter() - started) * 1e3
        return np.ascontiguousarray(descriptors, dtype=np.float32)

    def embed_batches(self, frames, batch_size=8):
        """Embed an iterable of frames in batches (map building)."""
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


def create_embedder(config=EmbedderConfig()):
    """Build the model of ``config``, export it once (cached by fingerprint), start a backend."""
    model_config = load_model_config(config.model)
    model = build_model(model_config)
    card = make_model_card(model_config, model)
    onnx_path = None
    if config.backend in ('auto', 'onnxruntime'):
        cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        onnx_path = cached_export(model, card, cache_dir) / ONNX_FILE
    backend = create_backend(config.backend, model=model, onnx_path=onnx_path,
                             threads=config.threads)
    LOG.info('embedder: model %s (fingerprint %s, %d-D) on %s', card.model_name,
             card.fingerprint, card.descriptor_dim, backend.name)
    return Embedder(backend, card)
