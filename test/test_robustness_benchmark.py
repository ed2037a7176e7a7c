"""The robustness benchmark's bad-frame corpus: bad inputs refused, good frames still decode."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'robustness.py'
# bad inputs the decoder is known to accept (see the benchmark's JSON for how far off they are)
KNOWN_ACCEPTED = set()


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    spec = importlib.util.spec_from_file_location('robustness_benchmark', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp('robustness') / 'robustness.json'
    result = module.main(['--sections', 'corpus', '--corpus-rounds', '2', '--out', str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=float))
    return result['corpus']


def test_every_bad_case_is_rejected_with_a_documented_reason(corpus):
    from vl_attention.data.images import REJECTION_REASONS
    accepted = {row['case']: row['message'] for row in corpus['cases'] if not row['rejected']}
    assert set(accepted) <= KNOWN_ACCEPTED, accepted
    reasons = {row['reason'] for row in corpus['cases'] if row['rejected']}
    assert reasons <= set(REJECTION_REASONS) | {'bad_frame'}
    by_case = {row['case']: row['reason'] for row in corpus['cases']}
    assert by_case['jpeg_bomb_30000x30000'] == by_case['png_bomb_30000x30000'] == 'too_large'
    assert by_case['jpeg_truncated_fake_eoi'] == by_case['png_truncated_fake_iend'] == \
        'truncated'
    assert by_case['raw_depth_16UC1'] == 'depth_image'
    assert len(corpus['cases']) >= 50


def test_bombs_are_refused_without_allocating_their_pixels(corpus):
    bombs = [row for row in corpus['cases'] if '_bomb_' in row['case']]
    assert len(bombs) == 4
    for row in bombs:
        assert row['peak_rss_growth_mb'] < 5.0 and row['ms'] < 50.0, row


def test_good_frames_decode_after_the_corpus(corpus):
    good = corpus['good_frames_after_corpus']
    assert good and all(row['decoded'] for row in good), good
    assert all(row['mean_abs_error'] < 4.0 for row in good), good
    assert corpus['summary']['all_good_frames_decoded']


def test_a_jpeg_with_scrambled_entropy_data_is_rejected(corpus):
    # libjpeg decodes it with only 'N extraneous bytes before marker 0xd9' as a warning
    row = next(row for row in corpus['cases'] if row['case'] == 'jpeg_scrambled_entropy')
    assert row['rejected'] and row['reason'] == 'corrupt', row
