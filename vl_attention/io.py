"""Crash-safe file writes: a reader sees the old file or the new one, never half of one.

A directory that cannot be created or written into raises :class:`PathError`, which
names the path (the tools print it in one line).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
from pathlib import Path
import re
import shutil
import tempfile
import time
from typing import Any, Iterator, Union

import numpy as np

from vl_attention.errors import VLAttentionError

LOG = logging.getLogger(__name__)

STAGING_SUFFIX = '.staging'
# the part of a staging name between ``.<name>.`` and ``.staging``: [<pid>-]<mkdtemp's 8 chars>
_STAGING_MIDDLE = re.compile(r'(?:(?P<pid>[0-9]+)-)?[a-z0-9_]{8}')
PROCESS_START_S = time.time()  # staging directories changed before this are a past process's
# what the path arguments of the package accept (``Path(...)`` of it is taken)
StrPath = Union[str, os.PathLike[str]]


class PathError(VLAttentionError, OSError):
    """A path cannot be created, read or written; the message names it and the fix."""


def make_directory(path: StrPath, what: str = 'output directory') -> Path:
    """Create directory ``path`` and its parents (if missing); :class:`PathError` if it cannot."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PathError(f'cannot create the {what} {path}: {error.strerror or error}; give a '
                        'directory you can write to') from error
    return path


def _unwritable(directory: Path, error: OSError) -> PathError:
    """Return the error for a ``directory`` that exists but takes no new file."""
    return PathError(f'cannot write into {directory}: {error.strerror or error}; give a '
                     'directory you can write to')


@contextlib.contextmanager
def atomic_path(path: StrPath) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    make_directory(path.parent, 'directory')
    try:
        handle, temporary = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp',
                                             dir=path.parent)
    except OSError as error:
        raise _unwritable(path.parent, error) from error
    os.close(handle)
    try:
        yield Path(temporary)
        _fsync_file(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def atomic_write_text(path: StrPath, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_report_sections(path: StrPath, result: dict[str, Any], sections: list[str], *,
                          merge: bool = False) -> dict[str, Any]:
    """Write a benchmark's JSON ``result`` atomically; return what was written.

    ``sections_run`` records when each of ``sections`` ran. With ``merge``, the
    sections of an existing report that this run did not redo are kept, with
    their own dates.
    """
    path = Path(path)
    result = {**result, 'sections_run': {name: time.strftime('%Y-%m-%d %H:%M')
                                         for name in sections}}
    if merge and path.is_file():
        previous = json.loads(path.read_text())
        runs = previous.get('sections_run')
        runs = runs if isinstance(runs, dict) else {}
        result = {**previous, **result, 'sections_run': {**runs, **result['sections_run']}}
    make_directory(path.parent)
    atomic_write_text(path, json.dumps(result, indent=2, default=float))
    return result


def atomic_write_bytes(path: StrPath, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


@contextlib.contextmanager
def atomic_directory(path: StrPath) -> Iterator[Path]:
    """Yield a fresh staging directory that replaces directory ``path`` when the block succeeds.

    An existing ``path`` is moved aside first and removed only once the new
    directory is in place, so a crash leaves either the old or the new tree.
    The staging directory is ``.<name>.<pid>-<random>.staging`` beside ``path``;
    those a crashed writer left behind are removed first
    (:func:`remove_stale_staging`).
    """
    path = Path(path)
    make_directory(path.parent, 'directory')
    remove_stale_staging(path)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f'.{path.name}.{os.getpid()}-',
                                        suffix=STAGING_SUFFIX, dir=path.parent))
    except OSError as error:
        raise _unwritable(path.parent, error) from error
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


def remove_stale_staging(path: StrPath) -> list[Path]:
    """Remove the staging directories of ``path`` that crashed writers left; return them.

    Only directories named ``.<name>.*.staging`` beside ``path`` are candidates,
    and only those last changed before this process started whose writer is not
    running: the pid in the name (``.<name>.<pid>-<random>.staging``) no longer
    exists, or the name has none (older versions). Nothing else is touched.
    """
    path = Path(path)
    removed = []
    for candidate in sorted(path.parent.glob(f'.{glob.escape(path.name)}.*{STAGING_SUFFIX}')):
        if not _is_stale_staging(candidate, path.name):
            continue
        try:
            shutil.rmtree(candidate)
        except OSError as error:
            LOG.warning('could not remove the stale staging directory %s (%s)', candidate, error)
            continue
        LOG.info('removed %s, left by a crashed save of %s', candidate, path)
        removed.append(candidate)
    return removed


def _is_stale_staging(candidate: Path, name: str) -> bool:
    if candidate.is_symlink() or not candidate.is_dir():
        return False
    try:
        if candidate.stat().st_mtime >= PROCESS_START_S:
            return False
    except OSError:
        return False
    match = _STAGING_MIDDLE.fullmatch(candidate.name[len(name) + 2:-len(STAGING_SUFFIX)])
    if match is None:
        return False   # another map's (``name.x``) or not ours at all
    if match['pid'] is None:
        return True   # written before staging names carried the writer's pid
    return not _process_exists(int(match['pid']))


def _process_exists(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True   # it exists (another user's) or the number is not a pid we can judge
    return True


def _fsync_file(path: StrPath) -> None:
    if os.path.isfile(path):
        with open(path, 'rb') as handle:
            os.fsync(handle.fileno())


def json_safe(value: Any) -> Any:
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
