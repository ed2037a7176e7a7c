"""FAISS index wrapper: inner-product search over unit-norm descriptors.

For unit vectors the inner product s and the Euclidean distance d are tied by
``d = sqrt(2 - 2 s)``; the localizer's ratio test uses d.
"""

import logging

import faiss
import numpy as np

from vl_attention.models.registry import Registry

LOG = logging.getLogger(__name__)

INDEX_TYPES = Registry('index type')


class IndexFileError(RuntimeError):
    """An index file is missing, truncated or corrupt."""


@INDEX_TYPES.register('flat_ip')
def _flat_inner_product(*, dim):
    return faiss.IndexFlatIP(dim)


class MapIndex:
    """Descriptor index of a map; positions in it are record indices."""

    def __init__(self, faiss_index, index_type):
        self.faiss_index = faiss_index
        self.index_type = index_type

    @classmethod
    def create(cls, index_type, dim):
        """Create an empty index of a registered type."""
        return cls(INDEX_TYPES.create(index_type, dim=int(dim)), index_type)

    @property
    def dim(self):
        """Return the descriptor dimension."""
        return self.faiss_index.d

    def __len__(self):
        """Return the number of descriptors held."""
        return self.faiss_index.ntotal

    def add(self, descriptors):
        """Append descriptors ``(N, D)``; they get the next record indices."""
        self.faiss_index.add(_as_queries(descriptors, self.dim))

    def search(self, queries, k):
        """Top-``k`` ``(similarities, indices)``, each ``(Q, k')`` with ``k' = min(k, N)``."""
        k = min(int(k), len(self))
        if k <= 0:
            raise ValueError('search needs a non-empty map and k >= 1')
        similarities, indices = self.faiss_index.search(_as_queries(queries, self.dim), k)
        return similarities, indices

    def serialize(self):
        """Index as bytes (FAISS's own format, no pickle)."""
        return faiss.serialize_index(self.faiss_index).tobytes()

    @classmethod
    def deserialize(cls, data, index_type, *, source):
        """Index from bytes written by :meth:`serialize`; damaged data raises IndexFileError."""
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as error:
            raise IndexFileError(f'{source} is not a readable FAISS index ({error}); '
                                 'rebuild the map') from error
        return cls(index, index_type)


def _as_queries(vectors, dim):
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f'descriptors of shape {vectors.shape} do not fit a {dim}-D index')
    return vectors
