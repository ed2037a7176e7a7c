"""The package's layers: no import cycles, imports only downward, a torch-free runtime."""

import ast
from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[1]
# lowest first (docs/architecture.md); a module may import its own layer and those below
LAYERS = (
    ('vl_attention', 'vl_attention.errors', 'vl_attention.registry', 'vl_attention.config',
     'vl_attention.io', 'vl_attention.geo', 'vl_attention.model_outputs'),
    ('vl_attention.data', 'vl_attention.engine.preprocess'),   # decoding and the input spec
    ('vl_attention.geometry',),
    ('vl_attention.models',),
    ('vl_attention.engine',),
    ('vl_attention.mapping',),
    ('vl_attention.localization',),
    ('vl_attention.ros',),          # the node; evaluate-bag --realtime replays through it
    ('vl_attention.evaluation',),
    ('vl_attention.training',),
    ('vl_attention.cli', 'vl_attention.demo'),
)


def _modules():
    sources = {}
    for base, package in ((ROOT / 'vl_attention', 'vl_attention'),
                          (ROOT / 'training', 'vl_attention.training')):
        for path in base.rglob('*.py'):
            parts = path.relative_to(base).with_suffix('').parts
            name = '.'.join((package,) + parts)
            sources[name[:-len('.__init__')] if name.endswith('.__init__') else name] = path
    return sources


def _resolve(name, modules):
    while name and name not in modules:
        name = name.rpartition('.')[0]
    return name


def _graph():
    """Map each module to the package modules it imports, at module level or in functions."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith('vl_attention') and node.level == 0:
                for alias in node.names:
                    full = f'{node.module}.{alias.name}'
                    targets.add(full if full in modules else _resolve(node.module, modules))
            elif isinstance(node, ast.Import):
                targets |= {_resolve(alias.name, modules) for alias in node.names
                            if alias.name.startswith('vl_attention')}
        graph[name] = targets - {name, ''}
    return graph


def _layer(name):
    best, depth = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + '.')) and len(prefix) > depth:
                best, depth = index, len(prefix)
    return best


def _cycle(graph):
    state = {}

    def visit(node, path):
        state[node] = 'open'
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 'open':
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target, path + [target])
                if found:
                    return found
        state[node] = 'done'
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycles():
    cycle = _cycle(_graph())
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_every_import_goes_down_the_layers():
    upward = [f'{source} (layer {_layer(source)}) -> {target} (layer {_layer(target)})'
              for source, targets in _graph().items() for target in sorted(targets)
              if _layer(target) > _layer(source)]
    assert not upward, 'imports that go up a layer:\n' + '\n'.join(upward)


def test_every_module_is_in_a_layer():
    assert [name for name in _modules() if _layer(name) is None] == []


def test_the_runtime_imports_neither_torch_nor_timm():
    code = ('import sys\n'
            'import vl_attention.localization, vl_attention.mapping, vl_attention.ros.node\n'
            'print(sorted(name for name in ("torch", "timm") if name in sys.modules))')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '[]'


def test_every_module_imports():
    names = sorted(name for name in _modules() if not name.endswith('__main__'))
    code = ('import importlib, sys\n'
            'failed = []\n'
            f'for name in {names!r}:\n'
            '    try:\n'
            '        importlib.import_module(name)\n'
            '    except Exception as error:\n'
            '        failed.append(f"{name}: {error!r}")\n'
            'print("\\n".join(failed))\n')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ''
