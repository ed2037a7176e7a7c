"""ament-style lint: flake8 (99 columns, single quotes) and pep257 docstrings on all Python."""

from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[1]
LINTED = ['vl_attention', 'training', 'launch', 'test', 'benchmarks', 'setup.py']


def test_flake8_and_pep257_clean():
    targets = [str(ROOT / name) for name in LINTED if (ROOT / name).exists()]
    result = subprocess.run(
        [sys.executable, '-m', 'flake8', '--config', str(ROOT / 'setup.cfg'), *targets],
        capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, f'flake8 found problems:\n{result.stdout}{result.stderr}'


def test_linter_plugins_are_active():
    # A lint run that silently lost its plugins would pass anything.
    result = subprocess.run([sys.executable, '-m', 'flake8', '--version'],
                            capture_output=True, text=True)
    assert 'flake8-quotes' in result.stdout
    assert 'flake8-docstrings' in result.stdout
