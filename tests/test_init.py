import subprocess
import sys

import pytest

import ranvier
import ranvier.config
import ranvier.errors
import ranvier.server


def test_the_server_names_are_exported() -> None:
    from ranvier import Config, ConfigError, HomeServer, load_config, open_homeserver

    assert Config is ranvier.config.Config
    assert ConfigError is ranvier.config.ConfigError
    assert load_config is ranvier.config.load_config
    assert HomeServer is ranvier.server.HomeServer
    assert open_homeserver is ranvier.server.open_homeserver


def test_all_is_accurate_and_listed() -> None:
    for name in ranvier.__all__:
        assert hasattr(ranvier, name), name
    assert set(ranvier.__all__) <= set(dir(ranvier))
    for name in ranvier.__all__:
        if name.endswith("Error") and name != "ConfigError":
            assert getattr(ranvier, name) is getattr(ranvier.errors, name)


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'open_home_server'"):
        _ = ranvier.open_home_server


def test_the_protocol_layer_loads_without_the_server() -> None:
    # A program that only checks signatures should not load the HTTP
    # server, TLS or storage.
    code = (
        "import sys, ranvier, ranvier.protocol\n"
        "heavy = {'ranvier.server', 'ranvier.storage', 'hypercorn', 'httpx', 'trio'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
        "ranvier.open_homeserver\n"
        "print('ranvier.server' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.splitlines() == ["[]", "True"]
