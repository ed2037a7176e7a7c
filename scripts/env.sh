# Source me: the ROS 2 install (when there is one), then .venv. Used by the Makefile.
_vl_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_vl_ros=$(bash "$_vl_root/scripts/find_ros.sh")
if [ -n "$_vl_ros" ]; then
  set +u
  # shellcheck disable=SC1090
  source "$_vl_ros"
fi
# shellcheck disable=SC1091
source "$_vl_root/.venv/bin/activate"
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
unset _vl_root _vl_ros
