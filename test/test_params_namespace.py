"""config/localize.yaml reaches localize_node under a namespace (its ``/**`` key).

A node-name key (``localize_node:``) only matches the node in the root namespace: launched with
``namespace:=robot1`` the node would silently run on its defaults. The node runs in its own
process with the real params file, a namespace and one value changed in the file.
"""

import random

import pytest
import yaml

from vl_attention.ros.launch_args import default_params_file
from vl_attention.ros.process import isolated_ros_environment, start_localize_node

pytestmark = pytest.mark.ros


def _params_with_map_dir(tmp_path, key, map_dir):
    values = yaml.safe_load(open(default_params_file()).read())
    (params,) = values.values()
    params['ros__parameters']['map_dir'] = str(map_dir)
    path = tmp_path / f'{key.strip("/*") or "wildcard"}.yaml'
    path.write_text(yaml.safe_dump({key: params}))
    return path


def _run_node(params_file, namespace, log_path):
    env = isolated_ros_environment(domain_id=random.randint(231, 232))
    process = start_localize_node({}, env=env, params_file=params_file, log_path=log_path,
                                  remappings=[('__ns', namespace)])
    try:
        return process.wait(timeout=120), log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_installed_params_file_is_keyed_for_every_namespace():
    values = yaml.safe_load(open(default_params_file()).read())
    assert list(values) == ['/**'] and 'ros__parameters' in values['/**']


def test_a_value_from_the_params_file_reaches_a_namespaced_node(tmp_path):
    missing = tmp_path / 'no_map_here'
    params_file = _params_with_map_dir(tmp_path, '/**', missing)
    code, log = _run_node(params_file, '/robot1', tmp_path / 'node.log')
    # the node read map_dir from the file: it names that directory, not an empty map_dir
    assert code == 1, log
    assert str(missing) in log and 'map_dir is empty' not in log, log


def test_a_node_name_key_is_ignored_under_a_namespace(tmp_path):
    """The failure the ``/**`` key fixes, so this test would notice a regression in rcl too."""
    params_file = _params_with_map_dir(tmp_path, 'localize_node', tmp_path / 'no_map_here')
    code, log = _run_node(params_file, '/robot1', tmp_path / 'node.log')
    assert code == 1 and 'map_dir is empty' in log, log
