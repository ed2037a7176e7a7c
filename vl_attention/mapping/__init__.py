"""Maps: FAISS index of database descriptors plus the poses of their images."""

from vl_attention.mapping.index import (choose_index_type, INDEX_TYPES, IndexFileError,
                                        IndexParams, MapIndex)
from vl_attention.mapping.map_format import (load_map, Map, map_model_dir, MapFormatError,
                                             MapManifest, read_manifest, save_map)
from vl_attention.mapping.records import PlaceRecords, PosesFileError, read_poses_csv

__all__ = ['choose_index_type', 'INDEX_TYPES', 'IndexFileError', 'IndexParams', 'Map',
           'MapFormatError', 'MapIndex', 'MapManifest', 'PlaceRecords', 'PosesFileError',
           'load_map', 'map_model_dir', 'read_manifest', 'read_poses_csv', 'save_map']
