"""Procedural town with exact 6-DoF ground truth and long-term appearance change.

The project's test bench: ``generate('demo', out_dir)`` writes image folders with
poses.csv (the map builder's input), optional rosbag2 files and world.json.
"""

from vl_attention.data.synthetic.camera import PinholeCamera
from vl_attention.data.synthetic.conditions import Condition, CONDITIONS, get_condition
from vl_attention.data.synthetic.occluders import Occluders, place_occluders
from vl_attention.data.synthetic.presets import (
    generate, get_preset, main, PRESETS, render_traversal, TraversalSpec, WorldPreset)
from vl_attention.data.synthetic.raster import GeometryBuffers
from vl_attention.data.synthetic.render import render, render_geometry, shade
from vl_attention.data.synthetic.town import generate_town, Town, TownConfig
from vl_attention.data.synthetic.traversal import plan_traversal, Traversal, TraversalConfig
from vl_attention.data.synthetic.writers import (
    ImageFolderWriter, POSES_HEADER, read_poses_csv, write_camera_info, write_world_json)

__all__ = [
    'CONDITIONS', 'Condition', 'GeometryBuffers', 'ImageFolderWriter', 'Occluders',
    'POSES_HEADER', 'PRESETS', 'PinholeCamera', 'Town', 'TownConfig', 'Traversal',
    'TraversalConfig', 'TraversalSpec', 'WorldPreset', 'generate', 'generate_town',
    'get_condition', 'get_preset', 'main', 'place_occluders', 'plan_traversal',
    'read_poses_csv', 'render', 'render_geometry', 'render_traversal', 'shade',
    'write_camera_info', 'write_world_json',
]
