"""vl_attention: long-term visual localization with attention-based global descriptors."""

import importlib.util
from pathlib import Path
import sys

__version__ = '0.1.0'


def _source_training_package():
    """Make ``vl_attention.training`` importable from a source checkout.

    The training code lives in the top-level ``training/`` directory, which
    setup.py installs as ``vl_attention.training``; running from the source
    tree (tests, benchmarks, ``python -m vl_attention.cli``) has no such
    subdirectory, so the package is registered from ``training/`` here.
    """
    name = f'{__name__}.training'
    if name in sys.modules or (Path(__file__).parent / 'training').is_dir():
        return
    source = Path(__file__).resolve().parent.parent / 'training'
    if not (source / '__init__.py').is_file():
        return
    spec = importlib.util.spec_from_file_location(
        name, source / '__init__.py', submodule_search_locations=[str(source)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_source_training_package()
