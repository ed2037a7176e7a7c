"""Geodesy round trips and strict configuration loading."""

from dataclasses import dataclass

import numpy as np
import pytest

from vl_attention.config import ConfigError, from_dict, load_config
from vl_attention.geo import (enu_to_geodetic, GeodeticOrigin, geodetic_to_enu,
                              quaternion_from_yaw_pitch_roll, rotation_angle_deg)
from vl_attention.models import load_model_config

ORIGIN = GeodeticOrigin(48.137, 11.575, 519.0)


def test_enu_round_trip_and_scale():
    enu = np.array([[100.0, -250.0, 3.0], [0.0, 0.0, 0.0]])
    latitude, longitude, altitude = enu_to_geodetic(enu, ORIGIN)
    np.testing.assert_allclose(geodetic_to_enu(latitude, longitude, altitude, ORIGIN), enu,
                               atol=1e-6)
    # one degree of latitude is about 111.2 km
    north = geodetic_to_enu(ORIGIN.latitude_deg + 1e-3, ORIGIN.longitude_deg, ORIGIN.altitude_m,
                            ORIGIN)
    assert north[1] == pytest.approx(111.2, abs=0.2)
    assert abs(north[0]) < 1e-6


def test_origin_rejects_out_of_range_values():
    with pytest.raises(ValueError, match='latitude_deg=95'):
        GeodeticOrigin(95.0, 0.0)


def test_rotation_angle_between_yaws():
    a = quaternion_from_yaw_pitch_roll(0.0)
    b = quaternion_from_yaw_pitch_roll(np.radians(30.0))
    assert rotation_angle_deg(a, b) == pytest.approx(30.0)


@dataclass(frozen=True)
class _Example:
    size_m: float = 1.0
    name: str = 'a'


def test_unknown_key_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['sise_m'\].*'size_m'"):
        from_dict(_Example, {'sise_m': 2.0})
    assert from_dict(_Example, {'size_m': 2}).size_m == 2.0


def test_model_preset_loads_by_name_and_rejects_unknown(tmp_path):
    config = load_model_config('effnet_lite0_gem')
    assert config.backbone == 'efficientnet_lite0' and config.aggregator == 'gem'
    with pytest.raises(ConfigError, match='no_such_model'):
        load_model_config('no_such_model')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('name: x\nbackbone: efficientnet_lite0\naggregator: gem\nbatchsize: 3\n')
    with pytest.raises(ConfigError, match='batchsize'):
        load_model_config(bad)
    broken = tmp_path / 'broken.yaml'
    broken.write_text('name: [unclosed\n')
    with pytest.raises(ConfigError, match='not valid YAML'):
        load_config(_Example, broken)
