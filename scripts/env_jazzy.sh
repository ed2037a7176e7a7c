# Source me: .venv-jazzy (Python 3.12, ROS 2 Jazzy from the ros-jazzy-* wheels; made by
# scripts/setup_jazzy_env.sh) instead of .venv, and no /opt/ros install.
_vl_scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export VL_VENV="$_vl_scripts/../.venv-jazzy" VL_ROS_REQUIREMENTS=requirements-ros-jazzy.txt
# shellcheck disable=SC1091
source "$_vl_scripts/env.sh"
unset _vl_scripts
