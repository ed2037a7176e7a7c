"""Query expansion at search time: average QE and alpha-QE over unit-norm descriptors.

Average query expansion (Chum, Philbin, Sivic, Isard & Zisserman, ICCV 2007):
re-query with the mean of the query and its top-n database neighbours,
L2-normalised. alpha-QE (Radenovic, Tolias & Chum, TPAMI 2018) weights each
neighbour d_i by ``max(q . d_i, 0) ** alpha`` (the query itself by 1) before
averaging; ``alpha = 0`` is average QE.
"""

from dataclasses import dataclass

import numpy as np

from vl_attention.mapping.index import MapIndex


@dataclass(frozen=True)
class QueryExpansion:
    """How to expand queries: ``top_n`` neighbours, weighted by similarity ** ``alpha``."""

    top_n: int = 5
    alpha: float = 0.0

    def __post_init__(self):
        if self.top_n < 1 or self.alpha < 0:
            raise ValueError(f'query expansion needs top_n >= 1 and alpha >= 0, got '
                             f'top_n={self.top_n}, alpha={self.alpha}')


def expand_queries(queries, database, expansion=QueryExpansion()):
    """Expand queries ``(Q, D)`` from a first search of ``database``; return them L2-normalised.

    ``database`` is a :class:`~vl_attention.mapping.index.MapIndex` (it must
    keep its float descriptors) or raw database descriptors ``(N, D)``.
    """
    index, descriptors = _index_and_descriptors(database)
    queries = _unit_rows(queries, index.dim)
    similarities, neighbours = index.search(queries, expansion.top_n)
    weights = np.where(neighbours >= 0, np.maximum(similarities, 0.0) ** expansion.alpha, 0.0)
    neighbour_descriptors = np.asarray(descriptors, np.float32)[np.maximum(neighbours, 0)]
    expanded = queries + np.einsum('qn,qnd->qd', weights, neighbour_descriptors)
    return _unit_rows(expanded, index.dim)


def search_expanded(queries, database, k, expansion=QueryExpansion()):
    """Search ``database`` with expanded queries: top-``k`` ``(similarities, indices)``."""
    index, _ = _index_and_descriptors(database)
    return index.search(expand_queries(queries, index, expansion), k)


def _index_and_descriptors(database):
    if isinstance(database, MapIndex):
        if database.descriptors is None or len(database.descriptors) != len(database):
            raise ValueError('query expansion needs the float descriptors of the map; load '
                             'the map with them or pass them as an (N, D) array')
        return database, database.descriptors
    descriptors = np.ascontiguousarray(database, dtype=np.float32)
    if descriptors.ndim != 2 or len(descriptors) == 0:
        raise ValueError(f'database descriptors must be a non-empty (N, D) array, got shape '
                         f'{descriptors.shape}')
    return MapIndex.build(descriptors, 'flat_ip'), descriptors


def _unit_rows(vectors, dim):
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f'queries of shape {vectors.shape} do not fit {dim}-D descriptors')
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
