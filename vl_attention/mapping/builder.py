"""Build a map from an image folder or rosbag2 files: ``main(cfg, inputs, out_dir) -> Path``.

Frames come from a source (:mod:`.sources`), are thinned to keyframes
(:mod:`.subsampling`), embedded in resumable batches (:mod:`.checkpoints`),
indexed (:mod:`.index`) and saved atomically (:mod:`.map_format`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
import logging
from pathlib import Path
import shutil
import time
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from vl_attention.config import ConfigError, to_dict
from vl_attention.engine.embedder import create_embedder, Embedder, EmbedderConfig
from vl_attention.engine.vocabulary import (evenly_spaced, fit_map_vocabulary,
                                            needs_map_vocabulary, VocabularyConfig)
from vl_attention.geo import GeodeticOrigin
from vl_attention.io import StrPath
from vl_attention.mapping.calibration import calibrate_similarities
from vl_attention.geometry.camera_model import CameraModel
from vl_attention.geometry.local_features import LOCAL_FEATURES, LocalFeatureConfig
from vl_attention.mapping.checkpoints import CheckpointStore, COLUMNS, partial_dir
from vl_attention.mapping.errors import MapBuildError
from vl_attention.mapping.local_feature_map import (build_local_feature_map,
                                                    concatenate_local_feature_maps, extract_all,
                                                    LocalFeatureBuildConfig, LocalFeatureMap)
from vl_attention.mapping.index import IndexParams, MapIndex
from vl_attention.mapping.map_format import (load_map, map_model_dir, MapManifest,
                                             POSES_FRAMES, poses_frame_of, save_map)
from vl_attention.mapping.records import (concatenate_records, PlaceRecords,
                                          records_from_columns)
from vl_attention.mapping.sources import (BagSource, FolderSource, FrameSource,  # noqa: F401
                                          ImageReadError, read_rgb, SourceFrame)
from vl_attention.mapping.subsampling import KeyframeConfig, KeyframeSelector

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class BagInput:
    """Rosbag2 input: bag paths, image topic, position topic, association gap."""

    bags: tuple[StrPath, ...]
    image_topic: str = '/camera/image_raw'
    position_topic: str = '/gps/fix'
    max_gap_s: float = 1.0


@dataclass(frozen=True)
class MapBuildConfig:
    """How to build a map."""

    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    index_type: str = 'auto'
    index_params: IndexParams = field(default_factory=IndexParams)
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    origin: Optional[GeodeticOrigin] = None  # None: the first pose (bag pose topics: required)
    checkpoint_frames: int = 512   # frames per resumable batch
    restart: bool = False          # discard a partial build instead of resuming it
    progress: bool = False
    local_features: str = 'sift_clahe'  # 'none' or a LOCAL_FEATURES name (PnP refinement)
    max_keypoints: int = 2000
    camera_info: str = ''          # camera YAML ('' = camera_info.yaml beside the images)
    vocabulary: VocabularyConfig = field(default_factory=VocabularyConfig)  # vocabulary: map
    poses_frame: str = 'camera'    # what the source's poses describe: POSES_FRAMES

    def __post_init__(self) -> None:
        if self.local_features != 'none':
            LOCAL_FEATURES.get(self.local_features)
        if self.poses_frame not in POSES_FRAMES:
            raise ConfigError(f'poses_frame must be one of {POSES_FRAMES}, got '
                              f'{self.poses_frame!r}')


def make_source(inputs: Union[BagInput, tuple[StrPath, StrPath]],
                origin: Optional[GeodeticOrigin] = None) -> Union[BagSource, FolderSource]:
    """Source for ``(images_dir, poses_file)`` or a :class:`BagInput`."""
    if isinstance(inputs, BagInput):
        return BagSource(inputs.bags, image_topic=inputs.image_topic,
                         position_topic=inputs.position_topic, max_gap_s=inputs.max_gap_s,
                         origin=origin)
    images_dir, poses_path = inputs
    return FolderSource(images_dir, poses_path, origin=origin)


def build_map(source: FrameSource, out_dir: StrPath, *, embedder: Embedder,
              cfg: MapBuildConfig = MapBuildConfig()) -> Path:
    """Embed the keyframes of ``source`` (resuming a partial build) and save the map.

    A model with ``vocabulary: map`` first fits its vocabulary on the
    keyframes (:mod:`vl_attention.engine.vocabulary`); the map carries the
    fitted model.
    """
    if cfg.restart:   # once, before the vocabulary fit keeps its centroids there
        shutil.rmtree(partial_dir(out_dir), ignore_errors=True)
        cfg = replace(cfg, restart=False)
    embedder, vocabulary = _with_map_vocabulary(source, embedder, cfg, partial_dir(out_dir))
    columns = embed_source(source, partial_dir(out_dir), embedder=embedder, cfg=cfg)
    origin = cfg.origin or source.origin
    assert origin is not None, 'a source sets its origin while it yields frames'
    records = _records(columns, origin)
    index = MapIndex.build(columns['descriptors'], cfg.index_type, params=cfg.index_params)
    LOG.info('indexed %d descriptors with %s', len(index), index.index_type)
    calibration = calibrate_similarities(index, columns['descriptors'], records.position_enu_m)
    manifest = MapManifest(model_name=embedder.card.model_name,
                           model_fingerprint=embedder.fingerprint,
                           descriptor_dim=embedder.descriptor_dim, count=len(records),
                           geodetic_origin=origin, index_type=index.index_type,
                           build=_build_info(source, cfg) | vocabulary,
                           calibration=calibration.as_dict())
    local_features = _local_features(source, cfg, records)
    if embedder.export_dir is None:
        LOG.warning('the %s backend has no ONNX export, so the map will not carry its model; '
                    'the node then needs model:=%s', embedder.backend_name,
                    embedder.card.model_name)
    path = save_map(out_dir, manifest, index, records, local_features,
                    model_dir=embedder.export_dir)
    CheckpointStore(partial_dir(out_dir), _signature(source, embedder, cfg)).remove()
    return path


def _with_map_vocabulary(source: FrameSource, embedder: Embedder, cfg: MapBuildConfig,
                         work_dir: Path) -> tuple[Embedder, dict[str, Any]]:
    """Return ``embedder`` with its vocabulary fitted on evenly spaced keyframes, if it needs one.

    The centroids are kept in the partial build, so a resumed build embeds
    with the same model; the source's counts are those of the embedding pass.
    """
    if not needs_map_vocabulary(embedder.card):
        return embedder, {}
    centroids_file = Path(work_dir) / 'vocabulary.npy'
    chosen: set[int] = set()
    stats = dict(source.stats)
    if not centroids_file.is_file():
        count = sum(1 for _ in _keyframes(source, cfg.keyframes, skip=0))
        chosen = set(evenly_spaced(count, cfg.vocabulary.images).tolist())
    images = (frame.load() for number, frame in enumerate(_keyframes(source, cfg.keyframes,
                                                                     skip=0))
              if number in chosen)
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    fitted, fit = fit_map_vocabulary(embedder, images, len(chosen), cfg=cfg.vocabulary,
                                     centroids_file=centroids_file)
    source.stats.clear()
    source.stats.update(stats)
    return fitted, {'vocabulary': fit}


def _local_features(source: FrameSource, cfg: MapBuildConfig, records: PlaceRecords,
                    camera: Optional[CameraModel] = None) -> Optional[LocalFeatureMap]:
    """Features + triangulated points of the keyframes (a second pass over the source)."""
    if cfg.local_features == 'none':
        return None
    camera = camera or _camera_model(source, cfg)
    if camera is None:
        LOG.warning('no camera model (give --camera-info YAML); the map has no local '
                    'features and the localizer will not refine poses')
        return None
    wanted = set(records.image_id.tolist())
    images = (frame.load() for frame in _keyframes(source, cfg.keyframes, skip=0)
              if frame.image_id in wanted)
    features_cfg = LocalFeatureConfig(kind=cfg.local_features, max_keypoints=cfg.max_keypoints)
    started = time.perf_counter()
    features = extract_all(tqdm(images, total=len(records), unit='img', desc='local features',
                                disable=not cfg.progress), features_cfg)
    if len(features) != len(records):
        raise MapBuildError(f'the source gave {len(features)} keyframes on the second pass, '
                            f'{len(records)} on the first; is it changing while being mapped?')
    local_map = build_local_feature_map(features, records.position_enu_m,
                                        records.orientation_xyzw, camera,
                                        LocalFeatureBuildConfig(features=features_cfg))
    LOG.info('local features: %s in %.1f s', local_map.statistics(),
             time.perf_counter() - started)
    return local_map


def _camera_model(source: FrameSource, cfg: MapBuildConfig) -> Optional[CameraModel]:
    if cfg.camera_info:
        return CameraModel.from_yaml(cfg.camera_info)
    images_dir = getattr(source, 'images_dir', None)
    beside = images_dir.parent / 'camera_info.yaml' if images_dir is not None else None
    return CameraModel.from_yaml(beside) if beside is not None and beside.is_file() else None


def add_to_map(map_dir: StrPath, source: FrameSource, *, embedder: Embedder,
               cfg: MapBuildConfig = MapBuildConfig()) -> Path:
    """Append the keyframes of ``source`` to the map at ``map_dir`` (saved atomically).

    ``embedder`` runs the map's model; for a map whose vocabulary was fitted
    when it was built, that is the model the map carries (``map_model_dir``).
    """
    if needs_map_vocabulary(embedder.card):
        raise MapBuildError(f'model {embedder.card.model_name} fits its vocabulary on the map '
                            'it builds; add to a map with the model the map carries '
                            f'(EmbedderConfig(export_dir={str(map_model_dir(map_dir))!r}), '
                            'which `vl-attention map add` uses)')
    loaded = load_map(map_dir, expected_fingerprint=embedder.fingerprint, mmap=False)
    held = poses_frame_of(loaded.manifest.build)
    if cfg.poses_frame != held:
        raise MapBuildError(f'{map_dir} holds {held} poses and these are {cfg.poses_frame} '
                            f'poses; a map keeps one meaning: add {held} poses '
                            f'(--poses-frame {held}), or build another map')
    work_dir = partial_dir(map_dir, f'add-{loaded.manifest.count}')
    columns = embed_source(source, work_dir, embedder=embedder, cfg=cfg)
    index = loaded.index
    index.add(columns['descriptors'])
    added = _records(columns, loaded.manifest.geodetic_origin)
    records = concatenate_records([loaded.records, added])
    build = dict(loaded.manifest.build)
    build['additions'] = list(build.get('additions', [])) + [_build_info(source, cfg)]
    assert index.descriptors is not None, 'load_map keeps the descriptors beside the index'
    calibration = calibrate_similarities(index, index.descriptors, records.position_enu_m)
    manifest = replace(loaded.manifest, count=len(records), build=build, created_utc='',
                       calibration=calibration.as_dict())
    local_features = None
    if loaded.local_features is not None:
        # the added images are triangulated among themselves, with the map's camera
        new = _local_features(source, replace(cfg, local_features=loaded.local_features.kind),
                              added, camera=loaded.local_features.camera)
        assert new is not None, 'the map camera is given, so there are features'
        local_features = concatenate_local_feature_maps([loaded.local_features, new])
    path = save_map(map_dir, manifest, index, records, local_features,
                    model_dir=map_model_dir(map_dir) or embedder.export_dir)
    CheckpointStore(work_dir, _signature(source, embedder, cfg)).remove()
    LOG.info('added %d places; the map now holds %d', len(columns['stamp_ns']), len(records))
    return path


def embed_source(source: FrameSource, work_dir: StrPath, *, embedder: Embedder,
                 cfg: MapBuildConfig) -> dict[str, np.ndarray]:
    """Columns (descriptors + poses) of the keyframes of ``source``, resumable."""
    batch_size = cfg.embedder.batch_size
    per_checkpoint = max(1, cfg.checkpoint_frames // batch_size) * batch_size
    store = CheckpointStore(work_dir, _signature(source, embedder, cfg), restart=cfg.restart)
    saved = store.load()
    done = len(saved.get('stamp_ns', ()))
    parts, pending = ([saved] if saved else []), _Pending()
    started, embedded = time.perf_counter(), 0
    with tqdm(initial=done, unit='img', disable=not cfg.progress, desc='embedding') as bar:
        # images are decoded while the source is open, one embedding batch at a time
        for frame in _keyframes(source, cfg.keyframes, skip=done):
            pending.add(frame, embedder, batch_size)
            if len(pending.frames) == per_checkpoint:
                parts.append(pending.flush(embedder, store))
                bar.update(per_checkpoint)
                embedded += per_checkpoint
        if pending.frames:
            bar.update(len(pending.frames))
            embedded += len(pending.frames)
            parts.append(pending.flush(embedder, store))
    # (a disabled tqdm bar counts nothing, so the count is kept here)
    _log_rate(embedded, time.perf_counter() - started, source)
    if not parts:
        raise MapBuildError(f'no frames to map from {source.describe()} ({dict(source.stats)})')
    return {name: np.concatenate([part[name] for part in parts]) for name in COLUMNS}


class _Pending:
    """Frames of the current checkpoint, embedded in batches of the embedder's size."""

    def __init__(self) -> None:
        self.frames: list[SourceFrame] = []
        self.images: list[np.ndarray] = []
        self.descriptors: list[np.ndarray] = []

    def add(self, frame: SourceFrame, embedder: Embedder, batch_size: int) -> None:
        self.frames.append(frame)
        self.images.append(frame.load())
        if len(self.images) == batch_size:
            self.descriptors.append(embedder.embed(self.images))
            self.images = []

    def flush(self, embedder: Embedder, store: CheckpointStore) -> dict[str, np.ndarray]:
        if self.images:
            self.descriptors.append(embedder.embed(self.images))
        columns = _columns(self.frames, np.concatenate(self.descriptors))
        store.save(columns)
        self.frames, self.images, self.descriptors = [], [], []
        return columns


def _keyframes(source: FrameSource, keyframes: KeyframeConfig, *,
               skip: int) -> Iterator[SourceFrame]:
    selector = KeyframeSelector(keyframes)
    kept = 0
    for frame in source.frames():
        if not selector(frame.position_enu_m, frame.orientation_xyzw):
            source.stats['skipped_not_keyframe'] += 1
            continue
        kept += 1
        if kept > skip:
            yield frame


def _columns(frames: Sequence[SourceFrame], descriptors: np.ndarray) -> dict[str, np.ndarray]:
    columns = {'descriptors': descriptors,
               'image_id': np.array([frame.image_id for frame in frames], dtype=np.str_),
               'stamp_ns': np.array([frame.stamp_ns for frame in frames], np.int64),
               'orientation_xyzw': np.array([frame.orientation_xyzw for frame in frames],
                                            np.float64)}
    geodetic = np.array([frame.geodetic for frame in frames], np.float64)
    for column, name in enumerate(('latitude_deg', 'longitude_deg', 'altitude_m')):
        columns[name] = geodetic[:, column]
    return columns


def _records(columns: Mapping[str, np.ndarray], origin: GeodeticOrigin) -> PlaceRecords:
    return records_from_columns(columns['image_id'], columns['stamp_ns'],
                                columns['latitude_deg'], columns['longitude_deg'],
                                columns['altitude_m'], columns['orientation_xyzw'], origin)


def _signature(source: FrameSource, embedder: Embedder, cfg: MapBuildConfig) -> dict[str, Any]:
    return {'source': source.describe(), 'model_fingerprint': embedder.fingerprint,
            'keyframes': to_dict(cfg.keyframes), 'batch_size': cfg.embedder.batch_size,
            'checkpoint_frames': cfg.checkpoint_frames,
            'origin': to_dict(cfg.origin) if cfg.origin else None}


def _build_info(source: FrameSource, cfg: MapBuildConfig) -> dict[str, Any]:
    return {'source': source.describe(), 'frames': dict(source.stats),
            'keyframes': to_dict(cfg.keyframes), 'poses_frame': cfg.poses_frame}


def _log_rate(count: int, seconds: float, source: FrameSource) -> None:
    LOG.info('embedded %d new images in %.1f s (%.1f images/s); source: %s', count, seconds,
             count / max(seconds, 1e-9), dict(source.stats))


def build_map_from_folder(images_dir: StrPath, poses_csv: StrPath, out_dir: StrPath, *,
                          embedder: Embedder, index_type: str = 'auto',
                          origin: Optional[GeodeticOrigin] = None, **settings: Any) -> Path:
    """Embed every image listed in ``poses_csv`` and save the map to ``out_dir``."""
    cfg = MapBuildConfig(index_type=index_type, origin=origin, **settings)
    return build_map(FolderSource(images_dir, poses_csv, origin=origin), out_dir,
                     embedder=embedder, cfg=cfg)


def main(cfg: MapBuildConfig, inputs: Union[BagInput, tuple[StrPath, StrPath]],
         out_dir: StrPath) -> Path:
    """Build a map from ``inputs`` (``(images_dir, poses_file)`` or :class:`BagInput`)."""
    embedder = create_embedder(cfg.embedder)
    return build_map(make_source(inputs, cfg.origin), Path(out_dir), embedder=embedder, cfg=cfg)
