"""``localize_lifecycle_node``: the managed localize_node (configure / activate / deactivate)."""

import sys

from vl_attention.ros.node import lifecycle_main as main

__all__ = ['main']

if __name__ == '__main__':
    sys.exit(main())
