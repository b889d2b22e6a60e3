"""The ``ranvier`` command.

Each subcommand is one entry of ``_COMMANDS``: a name, a line of help, a
function that declares its arguments and a function that runs it and
returns the exit status. Adding a subcommand is writing those two functions
and adding the entry.

Exit statuses: 0 on success, 1 when the command could not do its work (the
message on stderr says why), 2 for a command line that does not parse.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ranvier
from ranvier.protocol.signing import (
    generate_key_version,
    generate_signing_key,
    key_id,
    write_signing_keys,
)

__all__ = ["main"]


@dataclass(frozen=True)
class _Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class _CommandError(Exception):
    """A command that cannot do its work; the message is for the operator."""


# --- keygen -------------------------------------------------------------------------


def _keygen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="the signing key file to create")
    parser.add_argument(
        "--key-version",
        metavar="VERSION",
        help="the key's version, [a-zA-Z0-9_]+ (default: a_ and four random characters)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace the file if it exists (the old key is lost)",
    )


def _keygen(args: argparse.Namespace) -> int:
    version = args.key_version if args.key_version is not None else generate_key_version()
    try:
        key = generate_signing_key(version)
    except ValueError as exc:
        raise _CommandError(str(exc)) from None
    path: Path = args.path
    text = write_signing_keys([key])
    if args.force:
        _replace_private_file(path, text)
    else:
        _create_private_file(path, text)
    print(f"wrote signing key {key_id(key)} to {path}")
    return 0


def _create_private_file(path: Path, text: str) -> None:
    # O_EXCL makes "refuse to overwrite" hold even if another process
    # creates the file between a check and the write: an operator's key,
    # once published, cannot be replaced without breaking federation.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise _CommandError(
            f"{path} already exists; it may hold a key other servers trust."
            " Pass --force to replace it."
        ) from None
    except OSError as exc:
        raise _CommandError(f"cannot create {path}: {exc.strerror}") from None
    try:
        # The mode given to os.open is reduced by the umask; set it outright.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(text)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _replace_private_file(path: Path, text: str) -> None:
    # Write the new key beside the old one and rename it over, so the old
    # key is never lost to a half-written file.
    directory = path.parent
    try:
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _CommandError(f"cannot write in {directory}: {exc.strerror}") from None
    try:
        # mkstemp already creates the file readable by its owner only.
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        os.unlink(temporary)
        raise _CommandError(f"cannot replace {path}: {exc.strerror}") from None
    except BaseException:
        os.unlink(temporary)
        raise


_COMMANDS: list[_Command] = [
    _Command(
        "keygen",
        "create a signing key file (Synapse's format)",
        _keygen_arguments,
        _keygen,
    ),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ranvier", description="A Matrix homeserver core for Trio."
    )
    parser.add_argument("--version", action="version", version=f"ranvier {ranvier.__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for command in _COMMANDS:
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: the process's) and return its exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits for --help, --version and bad command lines; the
        # status is returned instead, so main can be called like a function.
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except _CommandError as exc:
        print(f"ranvier {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
