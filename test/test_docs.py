"""The README and config/localize.yaml stay true to the node's declared parameters."""

from pathlib import Path

import yaml

from vl_attention.ros.params import NODE_PARAMS

ROOT = Path(__file__).resolve().parents[1]


def test_every_node_parameter_is_in_the_params_file_with_its_default():
    values = yaml.safe_load((ROOT / 'config' / 'localize.yaml').read_text())
    params = values['/**']['ros__parameters']
    assert set(params) == {param.name for param in NODE_PARAMS}
    for param in NODE_PARAMS:
        assert params[param.name] == param.default, param.name
        assert type(params[param.name]) is type(param.default), param.name


def test_every_node_parameter_is_documented_in_the_readme():
    readme = (ROOT / 'README.md').read_text()
    for param in NODE_PARAMS:
        assert f'| `{param.name}` |' in readme, f'{param.name} missing from the README table'


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / 'README.md').read_text()
    assert 'make test' in readme and 'make test' in (ROOT / '.ci' / 'run').read_text()
