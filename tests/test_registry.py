"""Registry.build: a bad keyword from the config is a ConfigError, a TypeError inside is a bug."""
from __future__ import annotations

import pytest

from longtail.errors import ConfigError
from longtail.losses import build_loss
from longtail.registry import Registry


def _registry() -> Registry:
    reg = Registry("widget")

    @reg.register("plain")
    class Plain:
        def __init__(self, size: int, *, colour: str = "red") -> None:
            self.size, self.colour = size, colour

    @reg.register("broken")
    class Broken:
        def __init__(self, size: int) -> None:
            # a bug inside the constructor whose message mentions "argument"
            raise TypeError("unsupported operand: bad argument inside the constructor")

    @reg.register("calls_badly")
    def calls_badly(size: int):
        return len(size, size)  # TypeError: len() takes exactly one argument

    return reg


def test_unknown_keyword_is_a_config_error_naming_it_and_the_valid_ones():
    reg = _registry()
    with pytest.raises(ConfigError, match=r"widget 'plain'.*'colour_name'.*valid parameters: colour"):
        reg.build("plain", 3, colour_name="blue")


def test_missing_required_argument_is_a_config_error():
    with pytest.raises(ConfigError, match="widget 'plain'.*size"):
        _registry().build("plain")


def test_good_arguments_build():
    obj = _registry().build("plain", 3, colour="blue")
    assert (obj.size, obj.colour) == (3, "blue")


@pytest.mark.parametrize("name", ["broken", "calls_badly"])
def test_type_error_raised_inside_the_factory_propagates(name):
    with pytest.raises(TypeError, match="argument") as info:
        _registry().build(name, 3)
    assert not isinstance(info.value, ConfigError)


def test_build_loss_with_a_bad_parameter_names_it():
    with pytest.raises(ConfigError, match=r"loss 'kps'.*'m_maximum'.*m_max"):
        build_loss("kps", [50, 10, 2], m_maximum=0.3)
