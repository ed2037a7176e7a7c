"""Image decoding, rosbag reading/writing and the synthetic world."""
