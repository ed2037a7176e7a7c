"""Multi-view geometry of the map: camera model, local features, triangulation and PnP.

Below both mapping (which triangulates the map) and localization (which
refines poses against it); imports neither.
"""
