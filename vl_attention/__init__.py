"""vl_attention: long-term visual localization with attention-based global descriptors.

``vl_attention.training`` lives in the top-level ``training/`` folder and is mapped into this
package by ``package_dir`` in setup.py; from a source checkout it resolves through the editable
install that ``scripts/setup_env.sh`` makes into ``.venv`` (``pip install -e . --no-deps``).
"""

import os

# The runtime's numerical work is many small products (the place filter scores 512-1000 map
# descriptors per frame; PnP's Jacobians), where OpenBLAS's threads gain nothing and, on a
# robot's busy cores, busy-wait against ONNX Runtime's and FAISS's own threads: on 2 loaded
# cores a 512x1280 product took 2-27 ms with them and 0.3 ms with one thread. numpy reads
# this when it loads, so it applies to the console scripts and the node (which import this
# package first), not to a process that imported numpy already; set it to override.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

__version__ = '0.1.0'
