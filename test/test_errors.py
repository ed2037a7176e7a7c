"""One base class for expected errors: every library error is a VLAttentionError.

The tools (``vl-attention``, ``python -m vl_attention.training.train``, ``localize_node``)
catch only :class:`VLAttentionError` and print one line; anything else is a bug and keeps its
traceback.
"""

import importlib
import importlib.util
import inspect
import pkgutil
import subprocess
import sys
import threading
import types

import numpy as np
import pytest

import vl_attention
from vl_attention import cli
from vl_attention.errors import one_line, VLAttentionError
import vl_attention.training
from vl_attention.training import train

HAS_RCLPY = importlib.util.find_spec('rclpy') is not None


def _our_modules():
    """Yield every importable module of vl_attention and vl_attention.training."""
    for package in (vl_attention, vl_attention.training):
        yield package
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):
            if info.name.endswith('__main__'):
                continue
            try:
                yield importlib.import_module(info.name)
            except ModuleNotFoundError as error:
                # ROS 2 message packages and optional backends; without them the module is
                # not importable here (test_layering checks that every module imports)
                if (error.name or '').startswith('vl_attention') or \
                        (HAS_RCLPY and info.name.startswith('vl_attention.ros')):
                    raise


def test_every_exception_class_of_the_package_is_a_vl_attention_error():
    classes, offenders = [], []
    for module in _our_modules():
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and \
                    value.__module__ == module.__name__:
                classes.append(f'{module.__name__}.{name}')
                if not issubclass(value, VLAttentionError):
                    offenders.append(classes[-1])
    assert offenders == [], f'derive these from VLAttentionError: {offenders}'
    assert {'vl_attention.config.ConfigError', 'vl_attention.io.PathError',
            'vl_attention.training.sources.base.DatasetLayoutError'} <= set(classes)


def test_domain_errors_keep_their_builtin_bases():
    from vl_attention.config import ConfigError
    from vl_attention.engine.export_format import MissingExportError
    from vl_attention.io import PathError
    from vl_attention.mapping import MapFormatError
    assert issubclass(ConfigError, ValueError) and issubclass(MapFormatError, RuntimeError)
    assert issubclass(PathError, OSError) and issubclass(MissingExportError, FileNotFoundError)


def test_a_bad_input_prints_one_line_without_traceback(tmp_path):
    not_a_folder = tmp_path / 'file'
    not_a_folder.write_text('')
    done = subprocess.run([sys.executable, '-m', 'vl_attention.cli', 'synth', '--preset', 'tiny',
                           '--out', str(not_a_folder / 'world')],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert 'Traceback' not in done.stderr and done.stderr.count('\n') == 1, done.stderr
    assert done.stderr.startswith('vl-attention synth: error: cannot create the synthetic '
                                  f'world directory {not_a_folder / "world"}')


def _failing(error):
    def run(args):
        raise error
    return run


def test_cli_catches_only_vl_attention_errors(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, 'synth', (cli.COMMANDS['synth'][0], _failing(
        VLAttentionError('no such thing;\n  give another'))))
    assert cli.main(['synth', '--out', 'unused']) == 1
    assert capsys.readouterr().err == 'vl-attention synth: error: no such thing; give another\n'
    monkeypatch.setitem(cli.COMMANDS, 'synth', (cli.COMMANDS['synth'][0], _failing(
        ValueError('a bug'))))
    with pytest.raises(ValueError, match='a bug'):   # a bug keeps its traceback
        cli.main(['synth', '--out', 'unused'])


def test_train_catches_only_vl_attention_errors(monkeypatch, capsys):
    monkeypatch.setattr(train, 'run', _failing(VLAttentionError('bad recipe')))
    assert train.main(['--config', 'unused']) == 1
    assert capsys.readouterr().err == 'train: error: bad recipe\n'
    monkeypatch.setattr(train, 'run', _failing(RuntimeError('a bug')))
    with pytest.raises(RuntimeError, match='a bug'):
        train.main(['--config', 'unused'])


def test_one_line_joins_the_message():
    assert one_line(VLAttentionError('a\n  b\tc ')) == 'a b c'


class _Logger:
    def __init__(self):
        self.errors = []

    def error(self, message, **_):
        self.errors.append(message)


class _BuggyLocalizer:
    def localize(self, frame, **_):
        raise RuntimeError('boom')


@pytest.mark.skipif(not HAS_RCLPY, reason='needs rclpy')
def test_a_bug_in_the_worker_is_logged_once_with_its_traceback():
    from sensor_msgs.msg import Image
    from vl_attention.localization.pipeline import LocalizationStats
    from vl_attention.ros.conversions import rgb_to_image_msg
    from vl_attention.ros.node import _LocalizeCore
    logger = _Logger()
    core = types.SimpleNamespace(
        stats=LocalizationStats(), params={'max_image_pixels': 10 ** 6}, rectifier=None,
        _localizer_lock=threading.Lock(), localizer=_BuggyLocalizer(),
        _motion=lambda stamp_s: None, get_logger=lambda: logger)
    message = rgb_to_image_msg(np.zeros((32, 32, 3), np.uint8), Image())
    _LocalizeCore._process(core, message, 0.0)   # the worker goes on: nothing is raised
    (logged,) = logger.errors
    assert 'Traceback' in logged and 'RuntimeError: boom' in logged
    assert core.stats.internal_errors == 1


@pytest.mark.skipif(not HAS_RCLPY, reason='needs rclpy')
def test_node_main_catches_only_vl_attention_and_parameter_errors(capsys):
    import rclpy
    from rclpy.exceptions import InvalidParameterTypeException
    from rclpy.parameter import Parameter
    from vl_attention.ros import node

    def raising(error):
        def node_class():
            raise error
        return node_class

    assert node.main([], node_class=raising(VLAttentionError('no map;\n fix it'))) == 1
    assert capsys.readouterr().err == 'localize_node: no map; fix it\n'
    wrong_type = InvalidParameterTypeException(Parameter('top_k', value='abc'), 'integer')
    assert node.main([], node_class=raising(wrong_type)) == 1   # rclpy's: bad input too
    error = capsys.readouterr().err
    assert error.startswith('localize_node: ') and error.count('\n') == 1 and 'top_k' in error
    try:
        with pytest.raises(KeyError):   # a bug keeps its traceback
            node.main([], node_class=raising(KeyError('bug')))
    finally:
        rclpy.try_shutdown()
