"""Names shared by the models, the exporter and the runtime: outputs and the default preset.

Torch-free, so the runtime (model cards, ONNX Runtime, TensorRT) can read them.
"""

DESCRIPTOR_OUTPUT = 'descriptors'
POSITION_OUTPUT = 'position_m'
ORIENTATION_OUTPUT = 'orientation_xyzw'
POSE_OUTPUTS = (DESCRIPTOR_OUTPUT, POSITION_OUTPUT, ORIENTATION_OUTPUT)
POSE_FRAME = ('camera body pose (x forward, y left, z up) in the map frame of the training data; '
              'camera position = position_m + pose_origin_m, orientation_xyzw rotates body '
              'to map (unit, w >= 0)')

DEFAULT_MODEL = 'effnet_lite0_netvlad_vpr_map'
