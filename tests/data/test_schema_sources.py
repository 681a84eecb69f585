"""The data config: params.yaml's source lists match the schema defaults; bad values are errors."""

from __future__ import annotations

import pytest

from mitp.config import load_params
from mitp.data.schema import Food101Config, MMIMDBConfig, SNLIVEConfig
from mitp.errors import ConfigError


def test_params_yaml_sources_match_schema_defaults():
    params = load_params()
    for name, cls in [("food101", Food101Config), ("mmimdb", MMIMDBConfig), ("snli_ve", SNLIVEConfig)]:
        assert params.dataset(name).sources == cls().sources, name
    assert params.data.food101.sources[0].kaggle == "gianmarco96/upmcfood101"
    assert params.data.mmimdb.sources[0].urls[1] == "https://archive.org/download/mmimdb/mmimdb.tar.gz"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("data.mmimdb.sources", [{"name": "x.tar", "sha256": "abc"}], "64 hex"),
        ("data.mmimdb.sources", [{"name": "x.tar", "extract_to": "../up"}], "inside the dataset"),
        ("data.mmimdb.sources", [{"name": "/abs.tar"}], "inside the dataset"),
        ("data.mmimdb.bad_records", "ignore", "bad_records"),
        ("data.mmimdb.max_skip_fraction", 2, "max_skip_fraction"),
        ("data.snli_ve.sources", [{"name": "x", "mirror": "y"}], "unknown key"),
    ],
)
def test_bad_data_settings_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_params(overrides={key: value})
