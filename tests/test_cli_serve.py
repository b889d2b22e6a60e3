"""``ranvier serve``: real processes on real ports, stopped by real signals."""

import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ranvier.cli import _serve_config, main
from ranvier.config import Config
from ranvier.federation.transport.tls import client_ssl_context
from ranvier.protocol.signing import key_id, read_signing_keys, verify_signed_json
from ranvier.testing.network import free_port

SCRIPT = shutil.which("ranvier", path=str(Path(sys.executable).parent))
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0


def _write_config(directory: Path, port: int, extra: str = "") -> Path:
    # Everything but the port (and what a test adds) is left to the defaults.
    path = directory / "ranvier.toml"
    path.write_text(f'{extra}\n[[listeners]]\ntype = "federation"\nport = {port}\n')
    return path


class _Process:
    """A running ``ranvier serve`` whose stderr is collected line by line."""

    def __init__(self, argv: Sequence[str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_line(self, text: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                pytest.fail(f"no line with {text!r} within {timeout} s:\n{self.stderr}")
            if line is None:
                pytest.fail(f"the server exited before logging {text!r}:\n{self.stderr}")
            if text in line:
                return

    def stop(self, signum: signal.Signals) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=STOP_TIMEOUT)
        self._reader.join(timeout=STOP_TIMEOUT)
        return code

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


@contextmanager
def _serving(argv: Sequence[str], cwd: Path) -> Iterator[_Process]:
    running = _Process(argv, cwd)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
        assert running.process.stderr is not None
        running.process.stderr.close()


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _check_endpoints(data_dir: Path, port: int, server_name: str) -> None:
    with httpx.Client(
        verify=client_ssl_context(ca_file=data_dir / "tls.crt"), timeout=10
    ) as client:
        version = client.get(f"https://127.0.0.1:{port}/_matrix/federation/v1/version")
        assert version.status_code == 200
        assert version.json()["server"]["name"] == "ranvier"
        keys = client.get(f"https://127.0.0.1:{port}/_matrix/key/v2/server").json()
    (key,) = read_signing_keys((data_dir / "signing.key").read_text())
    assert keys["server_name"] == server_name
    assert list(keys["verify_keys"]) == [key_id(key)]
    verify_signed_json(keys, server_name, key.verify_key)


def test_the_installed_script_serves_with_defaults_and_stops_on_sigint(tmp_path: Path) -> None:
    assert SCRIPT is not None, "the ranvier console script is not installed"
    port = free_port()
    config = _write_config(tmp_path, port)
    with _serving([SCRIPT, "serve", "--config", str(config)], tmp_path) as server:
        server.wait_for_line(f"listening on https://127.0.0.1:{port} (federation)")
        # The default data directory, relative to the working directory.
        _check_endpoints(tmp_path / "ranvier-data", port, "localhost:8448")
        assert server.stop(signal.SIGINT) == 0, server.stderr
    assert "received SIGINT, stopping" in server.stderr
    assert "stopped" in server.lines[-1]
    assert "Traceback" not in server.stderr
    # One line per listener; the HTTP library's own banner is not repeated.
    assert server.stderr.count("listening on") == 1
    assert "Running on" not in server.stderr
    assert _refused(port)
    assert {path.name for path in (tmp_path / "ranvier-data").iterdir()} >= {
        "homeserver.db",
        "signing.key",
        "tls.crt",
        "tls.key",
    }


def test_a_second_signal_while_stopping_still_exits_0_without_a_traceback(
    tmp_path: Path,
) -> None:
    """An operator who presses Ctrl-C twice (or a supervisor that signals the
    process group as well as the process) gets the same clean stop.
    """
    port = free_port()
    config = _write_config(tmp_path, port)
    argv = [sys.executable, "-m", "ranvier.cli", "serve", "--config", str(config)]
    with _serving(argv, tmp_path) as server:
        server.wait_for_line(f"listening on https://127.0.0.1:{port} (federation)")
        server.process.send_signal(signal.SIGINT)
        # The second comes once the first is being acted on, while the
        # server stops (two at once would be folded into one).
        server.wait_for_line("received SIGINT, stopping")
        server.process.send_signal(signal.SIGINT)
        code = server.process.wait(timeout=STOP_TIMEOUT)
        server._reader.join(timeout=STOP_TIMEOUT)
    assert code == 0, server.stderr
    assert "Traceback" not in server.stderr
    assert "stopped" in server.lines[-1]
    assert _refused(port)


def test_the_module_stops_on_sigterm_and_restarts_with_the_same_key(tmp_path: Path) -> None:
    port = free_port()
    config = _write_config(tmp_path, port, extra='server_name = "serve.test"\ndata_dir = "state"\n')
    argv = [sys.executable, "-m", "ranvier.cli", "serve", "--config", str(config)]
    with _serving(argv, tmp_path) as first:
        first.wait_for_line(f"listening on https://127.0.0.1:{port} (federation)")
        _check_endpoints(tmp_path / "state", port, "serve.test")
        assert first.stop(signal.SIGTERM) == 0, first.stderr
    assert "received SIGTERM, stopping" in first.stderr
    key_file = (tmp_path / "state" / "signing.key").read_bytes()

    with _serving([*argv, "--log-level", "warning"], tmp_path) as second:
        # At WARNING, nothing is logged on a good start; ask until it answers.
        deadline = time.monotonic() + START_TIMEOUT
        while _refused(port):
            assert second.process.poll() is None, second.stderr
            assert time.monotonic() < deadline, "the second start never listened"
            time.sleep(0.05)
        _check_endpoints(tmp_path / "state", port, "serve.test")
        assert second.stop(signal.SIGINT) == 0, second.stderr
    assert "listening on" not in second.stderr
    assert (tmp_path / "state" / "signing.key").read_bytes() == key_file


def test_a_bad_configuration_exits_1_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[listeners]]\ntype = "federation"\nport = "8448"\n')
    result = subprocess.run(
        [sys.executable, "-m", "ranvier.cli", "serve", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == f"ranvier serve: {config}: listeners[0].port: expected int, got str\n"
    assert not (tmp_path / "ranvier-data").exists()


def test_a_missing_configuration_file_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.toml"
    assert main(["serve", "--config", str(missing)]) == 1
    assert capsys.readouterr().err == (
        f"ranvier serve: {missing}: cannot read the file: No such file or directory\n"
    )


def test_a_port_in_use_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = _write_config(tmp_path, port, extra=f'data_dir = "{tmp_path / "data"}"\n')
        assert main(["serve", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"ranvier serve: cannot listen on 127.0.0.1:{port}: Address already in use\n" in err
    assert "Traceback" not in err
    assert "Errno" not in err


def test_a_malformed_key_file_exits_1_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "signing.key").write_text("\ned25519 a_1\n")
    config = _write_config(tmp_path, free_port(), extra=f'data_dir = "{data_dir}"\n')
    assert main(["serve", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"ranvier serve: signing key file {data_dir / 'signing.key'}, line 2: expected 3" in err


def test_a_file_that_is_no_database_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "homeserver.db").write_bytes(b"this is not a database " * 1_000)
    config = _write_config(tmp_path, free_port(), extra=f'data_dir = "{data_dir}"\n')
    assert main(["serve", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"ranvier serve: cannot use the database {data_dir / 'homeserver.db'}: " in err
    assert "not a database" in err


def test_without_a_configuration_the_defaults_are_used() -> None:
    default = _serve_config(None)
    assert default == Config.default()
    assert default.server_name == "localhost:8448"
    assert default.data_dir == Path("ranvier-data")
    federation = [listener for listener in default.listeners if listener.type == "federation"]
    assert [(f.host, f.port, f.uses_tls) for f in federation] == [("127.0.0.1", 8448, True)]


def test_a_bad_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--log-level", "chatty"]) == 2
    assert "invalid choice: 'CHATTY'" in capsys.readouterr().err


def test_help_lists_serve(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "serve" in out
    assert "run the homeserver until SIGINT or SIGTERM" in out
