"""``ranvier worker``: the command line, and what it refuses before starting."""

from __future__ import annotations

from pathlib import Path

import pytest

from ranvier.cli import main


def test_a_worker_without_its_main_process_url_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('[replication]\nshared_secret = "s"\n')
    assert main(["worker", "--config", str(config), "--role", "client_reader"]) == 1
    assert "worker.main_replication_url: required to run a worker" in capsys.readouterr().err


def test_a_listener_of_another_role_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "worker.toml"
    config.write_text(
        '[replication]\nshared_secret = "s"\n'
        '[worker]\nmain_replication_url = "http://127.0.0.1:9093"\n'
        '[[listeners]]\ntype = "replication"\nport = 9094\n'
    )
    assert main(["worker", "--config", str(config), "--role", "federation_reader"]) == 1
    assert "listeners[0].type: a federation_reader worker serves" in capsys.readouterr().err


def test_the_role_and_the_config_are_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--role", "client_reader"]) == 2
    assert main(["worker", "--config", "x.toml", "--role", "event_persister"]) == 2
    assert "invalid choice" in capsys.readouterr().err
