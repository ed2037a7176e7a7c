"""Process-wide defaults (BLAS threads) and the benchmark report writer."""

import json
import os
import subprocess
import sys

import pytest

PROBE = ('import vl_attention, numpy, os; '
         'print(os.environ["OPENBLAS_NUM_THREADS"])')


@pytest.mark.parametrize('given, expected', [(None, '1'), ('3', '3')])
def test_importing_the_package_first_sets_blas_threads_unless_set(given, expected):
    env = {key: value for key, value in os.environ.items() if key != 'OPENBLAS_NUM_THREADS'}
    if given is not None:
        env['OPENBLAS_NUM_THREADS'] = given
    out = subprocess.run([sys.executable, '-c', PROBE], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == [expected]


def test_a_merged_benchmark_report_keeps_the_sections_it_did_not_redo(tmp_path):
    from vl_attention.io import write_report_sections
    path = tmp_path / 'results' / 'bench.json'
    write_report_sections(path, {'cpu': 'a', 'latency': {'p50_ms': 9.0}, 'scale': {'n': 1}},
                          ['latency', 'scale'])
    first = json.loads(path.read_text())
    merged = write_report_sections(path, {'cpu': 'b', 'latency': {'p50_ms': 5.0}}, ['latency'],
                                   merge=True)
    assert merged == json.loads(path.read_text())
    assert merged['latency'] == {'p50_ms': 5.0} and merged['scale'] == {'n': 1}
    assert merged['cpu'] == 'b' and set(merged['sections_run']) == {'latency', 'scale'}
    assert merged['sections_run']['scale'] == first['sections_run']['scale']
    replaced = write_report_sections(path, {'latency': {}}, ['latency'])
    assert set(replaced) == {'latency', 'sections_run'}
