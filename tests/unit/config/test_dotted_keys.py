from mitp.config.dotted_keys import flatten


def test_nested_sections_become_dotted_keys_and_empty_mappings_stay_values():
    nested = {"seed": 0, "model": {"interaction": {"start": 8, "interval": 1}, "kind": "mitp"}, "space": {}}
    assert flatten(nested) == {"seed": 0, "model.interaction.start": 8, "model.interaction.interval": 1,
                               "model.kind": "mitp", "space": {}}
    assert flatten({"a": {"b": 1}}, "train.") == {"train.a.b": 1}


def test_is_leaf_keeps_a_mapping_whole():
    space = {"model": {"hub_size": {"grid": [32, 64]}, "prompt_length": 8}}
    is_form = lambda v: set(v) == {"grid"}  # noqa: E731
    assert flatten(space, is_leaf=is_form) == {"model.hub_size": {"grid": [32, 64]}, "model.prompt_length": 8}
    assert flatten(space) == {"model.hub_size.grid": [32, 64], "model.prompt_length": 8}
