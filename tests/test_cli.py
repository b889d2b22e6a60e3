import io
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import signedjson.key

import ranvier
from ranvier.cli import main
from ranvier.protocol.signing import key_id, read_signing_keys

# The console script installed with the package sits beside the interpreter.
SCRIPT = shutil.which("ranvier", path=str(Path(sys.executable).parent))


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ranvier.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_writes_a_private_key_file(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    result = _run("keygen", path)
    assert result.returncode == 0, result.stderr
    assert _mode(path) == 0o600
    text = path.read_text("ascii")
    assert re.fullmatch(r"ed25519 a_[a-zA-Z0-9]{4} [A-Za-z0-9+/]{43}\n", text)
    (key,) = read_signing_keys(text)
    assert f"wrote signing key {key_id(key)} to {path}" in result.stdout
    with path.open() as file:
        (theirs,) = signedjson.key.read_signing_keys(file)
    assert theirs.encode() == key.encode()
    assert theirs.version == key.version


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    assert _run("keygen", path).returncode == 0
    before = path.read_bytes()
    result = _run("keygen", path)
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert "--force" in result.stderr
    assert path.read_bytes() == before


def test_keygen_force_replaces_the_key(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.write_text("old contents\n")
    path.chmod(0o644)
    result = _run("keygen", "--force", "--key-version", "b_2", path)
    assert result.returncode == 0, result.stderr
    (key,) = read_signing_keys(path.read_text("ascii"))
    assert key_id(key) == "ed25519:b_2"
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signing.key"]


def test_keygen_keys_differ(tmp_path: Path) -> None:
    first, second = tmp_path / "one.key", tmp_path / "two.key"
    assert main(["keygen", str(first)]) == 0
    assert main(["keygen", str(second)]) == 0
    assert read_signing_keys(first.read_text())[0].encode() != (
        read_signing_keys(second.read_text())[0].encode()
    )


def test_keygen_private_mode_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    previous = os.umask(0)
    try:
        assert main(["keygen", str(path)]) == 0
    finally:
        os.umask(previous)
    assert _mode(path) == 0o600


def test_keygen_refuses_a_bad_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "signing.key"
    assert main(["keygen", "--key-version", "a-b", str(path)]) == 1
    assert "a key version must be one or more of [a-zA-Z0-9_]" in capsys.readouterr().err
    assert not path.exists()


def test_keygen_reports_a_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "missing" / "signing.key"
    assert main(["keygen", str(path)]) == 1
    assert f"cannot create {path}" in capsys.readouterr().err
    assert main(["keygen", "--force", str(path)]) == 1
    assert f"cannot write in {path.parent}" in capsys.readouterr().err


def test_help_lists_commands() -> None:
    result = _run("--help")
    assert result.returncode == 0
    assert "keygen" in result.stdout
    assert "create a signing key file" in result.stdout


def test_installed_script() -> None:
    assert SCRIPT is not None, "the ranvier console script is not installed"
    result = subprocess.run(
        [SCRIPT, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    assert "keygen" in result.stdout


def test_installed_script_keygen(tmp_path: Path) -> None:
    assert SCRIPT is not None
    path = tmp_path / "signing.key"
    result = subprocess.run(
        [SCRIPT, "keygen", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert len(read_signing_keys(path.read_text())) == 1


def test_no_command_prints_help_and_fails() -> None:
    result = _run()
    assert result.returncode == 2
    assert "keygen" in result.stderr


def test_unknown_command_fails() -> None:
    result = _run("frobnicate")
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ranvier {ranvier.__version__}"


def test_keygen_output_is_readable_by_signedjson_from_text(tmp_path: Path) -> None:
    path = tmp_path / "k"
    assert main(["keygen", "--key-version", "x", str(path)]) == 0
    (theirs,) = signedjson.key.read_signing_keys(io.StringIO(path.read_text()))
    assert (theirs.alg, theirs.version) == ("ed25519", "x")
