"""Descriptor index of a map: exact, IVF-PQ or HNSW behind one interface.

All index types search by inner product over unit-norm descriptors. For unit
vectors the inner product s and the Euclidean distance d are tied by
``d = sqrt(2 - 2 s)``; the localizer's ratio test uses d.

* ``flat_ip``: exact brute force; the default for small maps.
* ``hnsw``: graph search over the float descriptors (exact distances, RAM ~ N x D x 4
  bytes plus the graph); ``ef_search`` trades speed for recall.
* ``ivf_pq``: inverted lists of 4-bit fast-scan product codes (RAM ~ N x pq_bytes);
  trained on a sample, ``nprobe`` lists are visited, and the approximate top
  ``rerank_k`` are re-ranked with exact inner products against the float
  descriptors, which a loaded map keeps memory-mapped on disk.

``index_type='auto'`` picks by map size (:func:`choose_index_type`). FAISS GPU is
used for searching when the installed FAISS has GPUs (``use_gpu``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
import logging
import math
from typing import Any, Optional

import faiss
import numpy as np
import numpy.typing as npt

from vl_attention.config import ConfigError
from vl_attention.errors import VLAttentionError
from vl_attention.io import StrPath
from vl_attention.registry import Registry

LOG = logging.getLogger(__name__)

INDEX_TYPES = Registry('index type')
AUTO_FLAT_MAX_COUNT = 20_000
AUTO_HNSW_MAX_BYTES = 4 << 30   # float descriptors held in RAM by HNSW
TRAIN_SEED = 1234


class IndexFileError(VLAttentionError, RuntimeError):
    """An index file is missing, truncated or corrupt."""


@dataclass(frozen=True)
class IndexParams:
    """Build and search parameters of a map index (stored in the map manifest)."""

    nlist: int = 0               # IVF lists; 0: about 4 sqrt(N), at most 65536
    pq_bytes: int = 0            # IVF-PQ code bytes per vector (4-bit codes); 0: D / 4
    train_sample: int = 100_000  # IVF training sample size
    hnsw_m: int = 32
    ef_construction: int = 80
    nprobe: int = 16
    ef_search: int = 64
    rerank_k: int = 256          # re-rank this many approximate hits exactly; 0: off
    use_gpu: bool = True

    def __post_init__(self) -> None:
        if min(self.nlist, self.pq_bytes, self.rerank_k) < 0 or \
                min(self.nprobe, self.ef_search, self.hnsw_m, self.train_sample) < 1:
            raise ConfigError(f'invalid index parameters {self}; counts must be >= 1 '
                              '(nlist, pq_bytes, rerank_k >= 0)')

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for the manifest."""
        return asdict(self)


def choose_index_type(count: int, dim: int) -> str:
    """Index type for ``count`` descriptors of ``dim``: exact when small, RAM-lean when huge."""
    if count <= AUTO_FLAT_MAX_COUNT:
        return 'flat_ip'
    if count * dim * 4 <= AUTO_HNSW_MAX_BYTES:
        return 'hnsw'
    return 'ivf_pq'


@INDEX_TYPES.register('flat_ip')
def _flat_inner_product(*, dim: int, count: int = 0,
                        params: IndexParams = IndexParams()) -> faiss.Index:
    return faiss.IndexFlatIP(dim)


@INDEX_TYPES.register('hnsw')
def _hnsw(*, dim: int, count: int = 0, params: IndexParams = IndexParams()) -> faiss.Index:
    index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params.ef_construction
    return index


@INDEX_TYPES.register('ivf_pq')
def _ivf_pq(*, dim: int, count: int = 0, params: IndexParams = IndexParams()) -> faiss.Index:
    nlist = params.nlist or int(min(65536, max(16, 4 * math.sqrt(max(count, 1)))))
    pq_bytes = params.pq_bytes or max(1, dim // 4)
    if dim % (2 * pq_bytes):
        raise ConfigError(f'ivf_pq: {dim}-D descriptors do not split into {2 * pq_bytes} '
                          f'4-bit sub-quantizers; set pq_bytes to a divisor of {dim // 2}')
    quantizer = faiss.IndexFlatIP(dim)
    return faiss.IndexIVFPQFastScan(quantizer, dim, nlist, 2 * pq_bytes, 4,
                                    faiss.METRIC_INNER_PRODUCT)


class MapIndex:
    """Descriptor index of a map; positions in it are record indices.

    ``descriptors`` (the float32 ``(N, D)`` rows, possibly memory-mapped) are
    kept beside the FAISS index for exact re-ranking and for saving the map.
    """

    def __init__(self, faiss_index: faiss.Index, index_type: str, *,
                 params: IndexParams = IndexParams(),
                 descriptors: Optional[np.ndarray] = None) -> None:
        self.faiss_index = faiss_index
        self.index_type = index_type
        self.params = params
        self.descriptors = descriptors
        self.read_only = False
        self._gpu_index: Optional[faiss.Index] = None
        self.apply_search_params()

    @classmethod
    def create(cls, index_type: str, dim: int, *, count: int = 0,
               params: IndexParams = IndexParams()) -> MapIndex:
        """Create an empty index of a registered type (``'auto'`` needs ``count``)."""
        if index_type == 'auto':
            index_type = choose_index_type(count, dim)
        faiss_index = INDEX_TYPES.create(index_type, dim=int(dim), count=int(count),
                                         params=params)
        return cls(faiss_index, index_type, params=params,
                   descriptors=np.zeros((0, int(dim)), np.float32))

    @classmethod
    def build(cls, descriptors: npt.ArrayLike, index_type: str = 'auto', *,
              params: IndexParams = IndexParams()) -> MapIndex:
        """Create, train (on a sample) and fill an index from descriptors ``(N, D)``."""
        descriptors = _as_queries(descriptors, np.shape(descriptors)[-1])
        index = cls.create(index_type, descriptors.shape[1], count=len(descriptors),
                           params=params)
        index.add(descriptors)
        return index

    @property
    def dim(self) -> int:
        """Return the descriptor dimension."""
        return self.faiss_index.d

    def __len__(self) -> int:
        """Return the number of descriptors held."""
        return self.faiss_index.ntotal

    def with_search_params(self, **changes: Any) -> MapIndex:
        """Change search parameters (``nprobe``, ``ef_search``, ``rerank_k``) in place."""
        self.params = replace(self.params, **changes)
        self.apply_search_params()
        return self

    def apply_search_params(self) -> None:
        """Push ``params`` into the FAISS index."""
        if hasattr(self.faiss_index, 'nprobe'):
            self.faiss_index.nprobe = self.params.nprobe
        if hasattr(self.faiss_index, 'hnsw'):
            self.faiss_index.hnsw.efSearch = self.params.ef_search
        self._gpu_index = None

    def add(self, descriptors: npt.ArrayLike) -> None:
        """Append descriptors ``(N, D)``; they get the next record indices."""
        if self.read_only:
            raise ValueError('this index is memory-mapped read-only; load the map with '
                             'mmap=False to add places')
        descriptors = _as_queries(descriptors, self.dim)
        if not self.faiss_index.is_trained:
            self._train(descriptors)
        self.faiss_index.add(descriptors)
        if self.descriptors is not None:
            self.descriptors = np.concatenate([self.descriptors, descriptors])
        self._gpu_index = None

    def _train(self, descriptors: np.ndarray) -> None:
        nlist = getattr(self.faiss_index, 'nlist', 1)
        if len(descriptors) < nlist:
            raise ConfigError(f'{self.index_type} needs at least {nlist} descriptors to train '
                              f'its {nlist} lists, got {len(descriptors)}; use flat_ip or '
                              'index_type auto for small maps')
        sample_size = min(len(descriptors), self.params.train_sample)
        rows = np.random.default_rng(TRAIN_SEED).choice(len(descriptors), sample_size,
                                                        replace=False)
        LOG.info('training %s on %d descriptors', self.index_type, sample_size)
        self.faiss_index.train(descriptors[np.sort(rows)])

    def search(self, queries: npt.ArrayLike, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(similarities, indices)``, each ``(Q, k')`` with ``k' = min(k, N)``."""
        k = min(int(k), len(self))
        if k <= 0:
            raise ValueError('search needs a non-empty map and k >= 1')
        queries = _as_queries(queries, self.dim)
        descriptors = self.descriptors
        if descriptors is None or not self._reranks():
            return self._searcher().search(queries, k)
        shortlist = min(max(k, self.params.rerank_k), len(self))
        _, candidates = self._searcher().search(queries, shortlist)
        return rerank(queries, candidates, descriptors, k)

    def _reranks(self) -> bool:
        return (self.index_type == 'ivf_pq' and self.params.rerank_k > 0
                and self.descriptors is not None and len(self.descriptors) == len(self))

    def _searcher(self) -> faiss.Index:
        if self._gpu_index is None:
            self._gpu_index = _to_gpu(self.faiss_index, self.params) or self.faiss_index
        return self._gpu_index

    def serialize(self) -> bytes:
        """Index as bytes (FAISS's own format, no pickle)."""
        return faiss.serialize_index(self.faiss_index).tobytes()

    @classmethod
    def deserialize(cls, data: bytes, index_type: str, *, source: object,
                    params: IndexParams = IndexParams(),
                    descriptors: Optional[np.ndarray] = None) -> MapIndex:
        """Index from bytes written by :meth:`serialize`; damaged data raises IndexFileError."""
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as error:
            raise IndexFileError(f'{source} is not a readable FAISS index ({error}); '
                                 'rebuild the map') from error
        return cls(index, index_type, params=params, descriptors=descriptors)

    @classmethod
    def read(cls, path: StrPath, index_type: str, *, mmap: bool = False,
             params: IndexParams = IndexParams(),
             descriptors: Optional[np.ndarray] = None) -> MapIndex:
        """Index from a file; ``mmap`` maps the codes instead of reading them into RAM."""
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as error:
            raise IndexFileError(f'{path} is not a readable FAISS index ({error}); '
                                 'rebuild the map') from error
        loaded = cls(index, index_type, params=params, descriptors=descriptors)
        loaded.read_only = bool(mmap)
        return loaded


def rerank(queries: np.ndarray, candidates: np.ndarray, descriptors: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` among ``candidates`` ``(Q, C)`` (-1 = none) by inner product."""
    similarities = np.full((len(queries), k), -np.inf, np.float32)
    indices = np.full((len(queries), k), -1, np.int64)
    for row, (query, ids) in enumerate(zip(queries, candidates)):
        ids = np.unique(ids[ids >= 0])  # sorted: sequential reads of a memory map
        scores = np.asarray(descriptors[ids], np.float32) @ query
        best = np.argsort(-scores, kind='stable')[:k]
        similarities[row, :len(best)] = scores[best]
        indices[row, :len(best)] = ids[best]
    return similarities, indices


def gpu_available() -> bool:
    """Return True when the installed FAISS has CUDA GPUs."""
    return hasattr(faiss, 'StandardGpuResources') and faiss.get_num_gpus() > 0


def _to_gpu(faiss_index: faiss.Index, params: IndexParams) -> Optional[faiss.Index]:
    if not params.use_gpu or not gpu_available() or isinstance(faiss_index, faiss.IndexHNSW):
        return None
    try:
        return faiss.index_cpu_to_all_gpus(faiss_index)
    except RuntimeError as error:  # e.g. an index type without a GPU version
        LOG.warning('FAISS GPU unavailable for this index (%s); searching on the CPU', error)
        return None


def _as_queries(vectors: npt.ArrayLike, dim: int) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f'descriptors of shape {vectors.shape} do not fit a {dim}-D index')
    return vectors
