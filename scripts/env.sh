# Source me: the ROS 2 install (when there is one), then .venv. Used by the Makefile.
# VL_VENV=DIR picks another venv (e.g. .venv-jazzy from scripts/setup_jazzy_env.sh); with
# VL_ROS_REQUIREMENTS set, ROS 2 comes from that venv's wheels and no /opt/ros is sourced.
_vl_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_vl_ros=''
[ -n "${VL_ROS_REQUIREMENTS:-}" ] || _vl_ros=$(bash "$_vl_root/scripts/find_ros.sh")
if [ -n "$_vl_ros" ]; then
  set +u
  # shellcheck disable=SC1090
  source "$_vl_ros"
fi
# shellcheck disable=SC1091
source "${VL_VENV:-$_vl_root/.venv}/bin/activate"
# Local-only discovery: ROS_AUTOMATIC_DISCOVERY_RANGE from Iron on, ROS_LOCALHOST_ONLY before
# (Humble); each distro ignores the variable it does not know.
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export ROS_LOCALHOST_ONLY=${ROS_LOCALHOST_ONLY:-1}
unset _vl_root _vl_ros
