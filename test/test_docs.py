"""The README, the docs pages and config/localize.yaml stay true to the code they describe."""

from pathlib import Path
import re

import yaml

from vl_attention.ros.params import NODE_PARAMS

ROOT = Path(__file__).resolve().parents[1]
NODE_DOC = ROOT / 'docs' / 'node.md'
README_MAX_LINES = 250
# a parameter row of docs/node.md: | `name` | `default` | live (yes/no) | range | meaning |
PARAM_ROW = re.compile(r'^\| `(?P<name>\w+)` \| `(?P<default>[^`]*)` \| (?P<live>yes|no) \|',
                       re.MULTILINE)
LINK = re.compile(r'\]\((?P<target>[^)#\s]+)(?:#[^)]*)?\)')


def _parameter_rows():
    return {match['name']: match for match in PARAM_ROW.finditer(NODE_DOC.read_text())}


def test_every_node_parameter_is_in_the_params_file_with_its_default():
    values = yaml.safe_load((ROOT / 'config' / 'localize.yaml').read_text())
    params = values['/**']['ros__parameters']
    assert set(params) == {param.name for param in NODE_PARAMS}
    for param in NODE_PARAMS:
        assert params[param.name] == param.default, param.name
        assert type(params[param.name]) is type(param.default), param.name


def test_the_node_parameter_table_lists_exactly_the_declared_parameters():
    rows = _parameter_rows()
    declared = [param.name for param in NODE_PARAMS]
    missing = [name for name in declared if name not in rows]
    extra = sorted(set(rows) - set(declared))
    assert not missing, f'{missing} missing from the parameter table of docs/node.md'
    assert not extra, f'{extra} in the parameter table of docs/node.md but not declared'


def test_the_node_parameter_table_gives_each_default_and_whether_it_is_live():
    rows = _parameter_rows()
    for param in NODE_PARAMS:
        row = rows[param.name]
        default = yaml.safe_load(row['default'])
        assert default == param.default and type(default) is type(param.default), \
            f'{param.name}: docs/node.md says {row["default"]}, the node {param.default!r}'
        assert (row['live'] == 'yes') == (not param.read_only), \
            f'{param.name}: docs/node.md says live={row["live"]}, read_only={param.read_only}'


def test_the_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / 'README.md').read_text()
    lines = readme.count('\n')
    assert lines <= README_MAX_LINES, f'README.md has {lines} lines (at most {README_MAX_LINES})'
    linked = {match['target'] for match in LINK.finditer(readme)}
    for page in sorted((ROOT / 'docs').glob('*.md')):
        assert f'docs/{page.name}' in linked, f'docs/{page.name} is not linked from README.md'


def test_every_relative_link_of_the_readme_and_the_docs_resolves():
    pages = [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))
    for page in pages:
        for match in LINK.finditer(page.read_text()):
            target = match['target']
            if re.match(r'^[a-z]+:', target):   # http(s):, mailto: ...
                continue
            assert (page.parent / target).exists(), \
                f'{page.relative_to(ROOT)} links {target}, which does not exist'


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / 'README.md').read_text()
    assert 'make test' in readme and 'make test' in (ROOT / '.ci' / 'run').read_text()
