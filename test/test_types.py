"""Static types: mypy, configured in setup.cfg ([mypy]), finds no errors in the typed modules."""

from pathlib import Path

import pytest

mypy_api = pytest.importorskip(
    'mypy.api', reason='mypy is not installed; pip install -r requirements-dev.txt')

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_errors(monkeypatch):
    monkeypatch.chdir(ROOT)   # the files of the [mypy] section are relative to the repository
    report, errors, status = mypy_api.run(['--config-file', str(ROOT / 'setup.cfg')])
    assert status == 0, f'mypy found problems (python -m mypy):\n{report}{errors}'
