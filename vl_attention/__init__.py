"""vl_attention: long-term visual localization with attention-based global descriptors.

``vl_attention.training`` lives in the top-level ``training/`` folder and is mapped into this
package by ``package_dir`` in setup.py; from a source checkout it resolves through the editable
install that ``scripts/setup_env.sh`` makes into ``.venv`` (``pip install -e . --no-deps``).
"""

__version__ = '0.1.0'
