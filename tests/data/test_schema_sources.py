"""The data config: params.yaml is the one definition of where each dataset comes from (the
schema holds no source of its own); bad values are errors naming the key."""

from __future__ import annotations

import pytest

from mitp.config.data_schema import DataConfig
from mitp.config.params import dataset_names, load_params, load_raw
from mitp.errors import ConfigError

REAL = ("food101", "mmimdb", "snli_ve")


def test_sources_come_from_params_yaml_alone():
    assert all(getattr(DataConfig(), name).sources == [] for name in dataset_names())  # no second definition
    raw = load_raw()
    params = load_params()
    for name in REAL:
        sources = params.dataset(name).sources
        assert sources and [s.name for s in sources] == [s["name"] for s in raw["data"][name]["sources"]], name
        for source in sources:  # each is fetchable, or tells the user how to get it
            assert source.urls or source.kaggle or (source.terms and source.satisfied_by), (name, source.name)
    assert params.data.food101.sources[0].kaggle == "gianmarco96/upmcfood101"
    assert params.data.mmimdb.sources[0].urls[1] == "https://archive.org/download/mmimdb/mmimdb.tar.gz"
    # dropping a dataset's sources from the params leaves it with none (nothing is filled in behind)
    assert load_params(overrides={"data.mmimdb.sources": []}).data.mmimdb.sources == []


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
