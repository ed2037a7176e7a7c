"""Crash-safe file writes: a reader sees the old file or the new one, never half of one."""

import contextlib
import os
from pathlib import Path
import shutil
import tempfile

import numpy as np


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        _fsync_file(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


@contextlib.contextmanager
def atomic_directory(path):
    """Yield a fresh staging directory that replaces directory ``path`` when the block succeeds.

    An existing ``path`` is moved aside first and removed only once the new
    directory is in place, so a crash leaves either the old or the new tree.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{path.name}.', suffix='.staging', dir=path.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a map is an ordinary shared directory
    try:
        yield staging
        for child in staging.iterdir():
            _fsync_file(child)
        backup = None
        if path.exists():
            backup = path.with_name(f'.{path.name}.old-{os.getpid()}')
            os.replace(path, backup)
        os.replace(staging, path)
        if backup is not None:
            shutil.rmtree(backup)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _fsync_file(path):
    if os.path.isfile(path):
        with open(path, 'rb') as handle:
            os.fsync(handle.fileno())


def json_safe(value):
    """Replace non-finite floats (JSON has no NaN/inf) with None and numpy scalars, recursively."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
