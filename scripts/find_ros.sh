#!/usr/bin/env bash
# Print the setup.bash of the ROS 2 install to use ($ROS_DISTRO first, then /opt/ros/*), or nothing.
if [ -n "${ROS_DISTRO:-}" ] && [ -f "/opt/ros/$ROS_DISTRO/setup.bash" ]; then
  echo "/opt/ros/$ROS_DISTRO/setup.bash"
  exit 0
fi
for setup in /opt/ros/*/setup.bash; do
  [ -f "$setup" ] && found=$setup
done
echo "${found:-}"
