"""TensorRT backend: build an engine from the exported ONNX, cache it, check it, run it.

The engine is built with the TensorRT 10 Python API (FP32, FP16, or INT8 with
an entropy calibrator fed from map images), with one optimisation profile
over batch (and H x W when the export is dynamic). The serialized engine is
cached under a key of (ONNX sha256, TensorRT version, GPU name, precision,
profile) and written atomically, so the next start reuses it. On every load
a fixed probe set is embedded and compared with FP32 ONNX Runtime output; an
engine below :data:`AGREEMENT_THRESHOLDS` is refused.

Models with a pose head have three outputs (descriptors, position_m,
orientation_xyzw); every output gets its own device buffer and
``run_outputs`` returns them by name, ``run`` the descriptors.

UNVERIFIED: no GPU and no TensorRT were available where this was written.
Everything that needs neither (cache key and path, atomic caching and
rebuild of unreadable engines, probe set and agreement check, calibration
batching, profile shapes) is unit-tested; the builder, calibrator, runtime
and execution code is written against NVIDIA's documented API and tested
only where ``tensorrt`` imports (test/test_engines.py skips it elsewhere).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import hashlib
import json
import logging
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Optional, Sequence

import cv2
import numpy as np
import numpy.typing as npt

from vl_attention.data.images import IMAGE_SUFFIXES
from vl_attention.engine.availability import Availability, CUDA, unavailable_reason
from vl_attention.engine.backend_base import (BackendOptions, BACKENDS, BackendUnavailable,
                                              descriptor_output_name, named_outputs,
                                              TorchModelSource)
from vl_attention.engine.export_format import INPUT_NAME, read_export
from vl_attention.engine.preprocess import Preprocessing, preprocess_frames
from vl_attention.io import atomic_write_bytes, StrPath

LOG = logging.getLogger(__name__)

AGREEMENT_THRESHOLDS = {'fp32': 0.999, 'fp16': 0.99, 'int8': 0.95}
WORKSPACE_BYTES = 1 << 30


class EngineDisagrees(BackendUnavailable):
    """A TensorRT engine's descriptors drift too far from the FP32 reference."""


@dataclass(frozen=True)
class EngineProfile:
    """Input shapes an engine accepts: batch 1..max_batch, fixed or ranged H x W."""

    height: int
    width: int
    max_batch: int = 8
    dynamic_size: bool = False

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """``(min, opt, max)`` NCHW shapes for ``IOptimizationProfile.set_shape``."""
        size = (self.height, self.width)
        low = (max(32, self.height // 2), max(32, self.width // 2)) if self.dynamic_size else size
        high = (self.height * 2, self.width * 2) if self.dynamic_size else size
        return (1, 3) + low, (1, 3) + size, (self.max_batch, 3) + high


def engine_cache_key(*, onnx_sha256: str, tensorrt_version: str, gpu_name: str, precision: str,
                     profile: EngineProfile, calibration: str = '') -> str:
    """Hex key naming one engine: any change of graph, library, GPU or settings rebuilds."""
    identity = json.dumps({'onnx_sha256': onnx_sha256, 'tensorrt': tensorrt_version,
                           'gpu': gpu_name, 'precision': precision,
                           'profile': asdict(profile), 'calibration': calibration},
                          sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:24]


def engine_cache_path(engine_dir: StrPath, model_name: str, precision: str, key: str) -> Path:
    """File of a cached engine: ``<engine_dir>/<model>-<precision>-<key>.engine``."""
    return Path(engine_dir) / f'{model_name}-{precision}-{key}.engine'


def load_or_build_engine(path: StrPath, *, build: Callable[[], bytes],
                         deserialize: Callable[[bytes], Any]) -> tuple[Any, bool]:
    """Deserialize the cached engine at ``path``, or build, cache (atomically) and load one.

    ``build()`` returns serialized bytes; ``deserialize(bytes)`` returns an
    engine or ``None``. An unreadable cached file (truncated, other TensorRT)
    is rebuilt once. Returns ``(engine, built)``.
    """
    path = Path(path)
    if path.is_file():
        engine = deserialize(path.read_bytes())
        if engine is not None:
            LOG.info('tensorrt: reusing cached engine %s', path)
            return engine, False
        LOG.warning('tensorrt: cached engine %s is unreadable; rebuilding it', path)
    data = build()
    atomic_write_bytes(path, data)
    engine = deserialize(data)
    if engine is None:
        raise BackendUnavailable(f'TensorRT could not deserialize the engine it just built '
                                 f'({path}); delete it and check the TensorRT install')
    LOG.info('tensorrt: built and cached engine %s (%.1f MB)', path, len(data) / 1e6)
    return engine, True


def probe_batch(height: int, width: int, count: int = 4, seed: int = 0) -> np.ndarray:
    """Deterministic smooth colour images, normalised to ~[-2, 2], ``float32 (count, 3, H, W)``."""
    random = np.random.default_rng(seed)
    frames = [cv2.resize(random.integers(0, 256, (6, 8, 3), dtype=np.uint8), (width, height),
                         interpolation=cv2.INTER_CUBIC) for _ in range(count)]
    batch = np.stack(frames).astype(np.float32) / 255.0
    return np.ascontiguousarray(((batch - 0.5) / 0.25).transpose(0, 3, 1, 2))


def probe_agreement(reference: npt.ArrayLike, candidate: npt.ArrayLike) -> float:
    """Smallest cosine similarity between matching rows of two descriptor sets."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise EngineDisagrees(f'engine output shape {candidate.shape} differs from the FP32 '
                              f'reference {reference.shape}')
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    return float(np.min(np.sum(reference * candidate, axis=1) / np.maximum(norms, 1e-12)))


def check_agreement(min_cosine: float, precision: str) -> float:
    """Raise :class:`EngineDisagrees` when ``min_cosine`` is below the precision's threshold."""
    threshold = AGREEMENT_THRESHOLDS[precision]
    if not min_cosine > threshold:
        raise EngineDisagrees(f'{precision} engine agrees with FP32 only to cosine '
                              f'{min_cosine:.5f} (needs > {threshold}); use a higher precision '
                              'or recalibrate with more map images')
    return min_cosine


def calibration_frames(folder: StrPath, limit: int = 64) -> list[np.ndarray]:
    """Up to ``limit`` RGB frames from a folder of map images (sorted by name)."""
    folder = Path(folder)
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit] \
        if folder.is_dir() else []
    if not paths:
        raise BackendUnavailable(f'INT8 calibration needs map images, and {folder} has none; '
                                 'set calibration_dir to a folder of database images')
    # an unreadable file fails in cvtColor (imread gives None)
    return [cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR),  # type: ignore[arg-type]
                         cv2.COLOR_BGR2RGB)
            for path in paths]


def calibration_batches(frames: Sequence[np.ndarray], preprocessing: Preprocessing,
                        batch_size: int) -> list[np.ndarray]:
    """Full preprocessed batches for the calibrator (a short tail is dropped)."""
    batch_size = min(batch_size, len(frames))
    return [preprocess_frames(frames[start:start + batch_size], preprocessing)
            for start in range(0, len(frames) - batch_size + 1, batch_size)]


def fingerprint_batches(batches: Iterable[np.ndarray]) -> str:
    """Short hash of calibration data, part of an INT8 engine's cache key."""
    digest = hashlib.sha256()
    for batch in batches:
        digest.update(np.ascontiguousarray(batch).tobytes())
    return digest.hexdigest()[:16]


def fp32_reference(onnx_path: StrPath, batch: np.ndarray) -> np.ndarray:
    """Descriptors of ``batch`` from ONNX Runtime on the CPU (the FP32 reference)."""
    import onnxruntime
    session = onnxruntime.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    name = descriptor_output_name(output.name for output in session.get_outputs())
    return session.run([name], {session.get_inputs()[0].name: batch})[0]


def split_io_names(names: Iterable[str],
                   is_input: Callable[[str], bool]) -> tuple[str, tuple[str, ...]]:
    """``(input, outputs)`` of an engine's tensor names: one image input, >= 1 outputs.

    ``is_input(name)`` tells inputs from outputs; the outputs keep engine order.
    """
    names = list(names)
    inputs = [name for name in names if is_input(name)]
    outputs = tuple(name for name in names if name not in inputs)
    if len(inputs) != 1 or not outputs:
        raise BackendUnavailable(f'engine has inputs {inputs} and outputs {list(outputs)}; '
                                 'expected one image input and a descriptor output')
    return inputs[0], outputs


def _make_calibrator(trt: Any, torch: ModuleType, batches: Sequence[np.ndarray],
                     cache_path: Path) -> Any:
    """Entropy calibrator feeding device copies of ``batches`` (UNVERIFIED, needs a GPU)."""
    class MapImageCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.pending = iter(batches)
            self.device_batch: Any = None  # keep the current batch alive while TensorRT reads it

        def get_batch_size(self) -> int:
            return int(batches[0].shape[0])

        def get_batch(self, names: Sequence[str]) -> Optional[list[int]]:
            batch = next(self.pending, None)
            if batch is None:
                return None
            self.device_batch = torch.from_numpy(batch).to(CUDA)
            return [int(self.device_batch.data_ptr())]

        def read_calibration_cache(self) -> Optional[bytes]:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            atomic_write_bytes(cache_path, bytes(cache))

    return MapImageCalibrator()


def build_serialized_engine(trt: ModuleType, onnx_path: StrPath, *, input_name: str,
                            precision: str, profile: EngineProfile, logger: Any,
                            calibrator: Any = None) -> bytes:
    """Parse the ONNX file and build a serialized engine (UNVERIFIED, needs TensorRT)."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailable(f'TensorRT cannot parse {onnx_path}: {errors}')
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    shapes = builder.create_optimization_profile()
    shapes.set_shape(input_name, *profile.shapes())
    config.add_optimization_profile(shapes)
    if precision in ('fp16', 'int8'):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == 'int8':
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(shapes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailable(f'TensorRT failed to build a {precision} engine from '
                                 f'{onnx_path}; see the TensorRT log above')
    return bytes(serialized)


@BACKENDS.register('tensorrt')
class TensorRTBackend:
    """A cached TensorRT engine run with torch-allocated device buffers (UNVERIFIED)."""

    name = 'tensorrt'

    def __init__(self, *, model: Optional[TorchModelSource] = None,
                 onnx_path: Optional[StrPath], options: BackendOptions = BackendOptions(),
                 availability: Optional[Availability] = None) -> None:
        from vl_attention.engine.availability import probe_availability
        availability = availability or probe_availability()
        reason = unavailable_reason('tensorrt', availability)
        if reason:
            raise BackendUnavailable(reason)
        if onnx_path is None or not Path(onnx_path).is_file():
            raise BackendUnavailable(f'no ONNX file at {onnx_path}')
        import tensorrt as trt
        import torch
        self.trt, self.torch = trt, torch
        self.device, self.precision = CUDA, options.precision
        self.card = read_export(Path(onnx_path).parent)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = self._load_engine(onnx_path, options, availability)
        self.context = self.engine.create_execution_context()
        self.input_name, self.output_names = self._io_names()
        self.output_name = descriptor_output_name(self.output_names)
        self.stream = torch.cuda.Stream()
        self.agreement = self._check_probe(onnx_path)
        self.description = (f'tensorrt {trt.__version__} {self.precision} on '
                            f'{availability.cuda_device} (probe cosine {self.agreement:.5f})')

    def _load_engine(self, onnx_path: StrPath, options: BackendOptions,
                     availability: Availability) -> Any:
        prep = self.card.preprocessing
        profile = EngineProfile(prep.input_height, prep.input_width, options.max_batch,
                                self.card.dynamic_size)
        batches, calibration = None, ''
        if self.precision == 'int8':
            batches = calibration_batches(calibration_frames(options.calibration_dir), prep,
                                          options.max_batch)
            calibration = fingerprint_batches(batches)
        key = engine_cache_key(onnx_sha256=self.card.onnx_sha256,
                               tensorrt_version=availability.tensorrt_version,
                               gpu_name=availability.cuda_device, precision=self.precision,
                               profile=profile, calibration=calibration)
        engine_dir = Path(options.engine_dir or Path(onnx_path).parent / 'tensorrt')
        path = engine_cache_path(engine_dir, self.card.model_name, self.precision, key)
        runtime = self.trt.Runtime(self.logger)
        self.runtime = runtime  # the engine must not outlive its runtime

        def build() -> bytes:
            calibrator = (_make_calibrator(self.trt, self.torch, batches,
                                           path.with_suffix('.calibration'))
                          if batches else None)
            return build_serialized_engine(self.trt, onnx_path, input_name=INPUT_NAME,
                                           precision=self.precision, profile=profile,
                                           logger=self.logger, calibrator=calibrator)
        engine, _ = load_or_build_engine(path, build=build,
                                         deserialize=runtime.deserialize_cuda_engine)
        return engine

    def _io_names(self) -> tuple[str, tuple[str, ...]]:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        return split_io_names(
            names, lambda name: self.engine.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT)

    def _check_probe(self, onnx_path: StrPath) -> float:
        prep = self.card.preprocessing
        batch = probe_batch(prep.input_height, prep.input_width)
        return check_agreement(probe_agreement(fp32_reference(onnx_path, batch), self.run(batch)),
                               self.precision)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Embed a preprocessed batch on the GPU (UNVERIFIED)."""
        return self.run_outputs(batch)[self.output_name]

    def run_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of a preprocessed batch by name, on the GPU (UNVERIFIED).

        The engine's I/O stays FP32 at every precision (the builder flags only
        allow lower-precision layers inside), so each output is a float32 buffer.
        """
        torch = self.torch
        with torch.cuda.stream(self.stream):
            images = torch.from_numpy(batch).pin_memory().to(CUDA, non_blocking=True)
            self.context.set_input_shape(self.input_name, tuple(images.shape))
            self.context.set_tensor_address(self.input_name, int(images.data_ptr()))
            outputs = []
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                outputs.append(torch.empty(shape, dtype=torch.float32, device=CUDA))
                self.context.set_tensor_address(name, int(outputs[-1].data_ptr()))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError('TensorRT execute_async_v3 failed; see the TensorRT log')
        self.stream.synchronize()
        return named_outputs(self.output_names, [output.cpu().numpy() for output in outputs])
