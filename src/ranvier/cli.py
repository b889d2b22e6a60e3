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
import logging
import os
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

import trio

import ranvier
from ranvier.config import Config, ConfigError, load_config
from ranvier.keyfile import KeyFileError
from ranvier.malloc import limit_malloc_arenas
from ranvier.os_errors import describe_os_error
from ranvier.protocol.signing import (
    generate_key_version,
    generate_signing_key,
    key_id,
    write_signing_keys,
)

if TYPE_CHECKING:
    from ranvier.storage import Storage
    from ranvier.storage.reads import ResyncProgress

__all__ = ["main"]

_log: Final = logging.getLogger("ranvier.cli")
_T = TypeVar("_T")


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


# --- serve --------------------------------------------------------------------------

_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level_argument(parser: argparse.ArgumentParser) -> None:
    """``--log-level``, alike for the main process and its workers."""
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=_LOG_LEVELS,
        default="INFO",
        help="the least severe messages logged (default: INFO)",
    )


def _config_argument(parser: argparse.ArgumentParser, help: str, *, required: bool = False) -> None:
    """``--config FILE``, whose ``help`` says which file and what it is read for."""
    parser.add_argument("--config", type=Path, metavar="FILE", required=required, help=help)


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(
        parser,
        "the TOML configuration file (default: the built-in defaults: server name"
        " localhost:8448, data in ./ranvier-data, federation on 127.0.0.1:8448)",
    )
    _log_level_argument(parser)


def _serve(args: argparse.Namespace) -> int:
    config = _serve_config(args.config)
    # Imported here: the server brings in the HTTP stack and storage, which
    # the other commands do not need.
    from ranvier.server import open_homeserver

    return _run_until_signalled(config, args.log_level, lambda: open_homeserver(config))


_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def _run_until_signalled(
    config: Config, log_level: str, open_server: Callable[[], AbstractAsyncContextManager[object]]
) -> int:
    """Run the server ``open_server`` opens until SIGINT or SIGTERM."""

    async def serve_until_signalled() -> None:
        # Signals are received as messages, not as KeyboardInterrupt, so
        # that a stop always goes through the orderly shutdown. The receiver
        # is open before the start, so a signal during the start is kept
        # and acted on as soon as the server runs.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with open_server():
                async for number in signals:
                    _log.info("received %s, stopping", signal.Signals(number).name)
                    break
        # Stopped: a stop signal from now on has nothing left to stop, and
        # would only end the process with a traceback on its way out.
        for number in _STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        _log.info("stopped")

    handler = _log_handler()
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(log_level)
    # Before the server's threads start, or each makes an arena of its own.
    limit_malloc_arenas()
    handlers = {number: signal.getsignal(number) for number in _STOP_SIGNALS}
    try:
        trio.run(serve_until_signalled)
    except KeyboardInterrupt:
        # A second signal that came while the server was stopping: Trio
        # delivers it when the receiver closes, after the orderly shutdown.
        _log.info("stopped")
    except (ConfigError, KeyFileError) as exc:
        raise _CommandError(str(exc)) from None
    except OSError as exc:
        raise _CommandError(describe_os_error(exc)) from None
    except sqlite3.Error as exc:
        raise _CommandError(f"cannot use the database {config.paths.database}: {exc}") from None
    except Exception:
        _log.exception("the server failed")
        return 1
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        for number, previous in handlers.items():
            if previous is not None:
                signal.signal(number, previous)
    return 0


def _serve_config(path: Path | None) -> Config:
    """The configuration ``serve`` runs with: the file's, or the defaults."""
    if path is None:
        return Config.default()
    try:
        return load_config(path)
    except ConfigError as exc:
        raise _CommandError(str(exc)) from None


def _log_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_not_hypercorn_banner)
    return handler


def _not_hypercorn_banner(record: logging.LogRecord) -> bool:
    # hypercorn announces each socket ("Running on ... (CTRL + C to quit)");
    # the server's own "listening on" line says it, and names the API served.
    return not (record.name == "ranvier.http" and record.getMessage().startswith("Running on "))


# --- worker -------------------------------------------------------------------------


def _worker_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(
        parser,
        "the worker's TOML configuration file; [worker] main_replication_url names the"
        " main process's replication listener",
        required=True,
    )
    parser.add_argument(
        "--role",
        required=True,
        choices=("federation_reader", "client_reader", "federation_sender"),
        help="what the worker serves: the federation API, the client-server API, or"
        " outgoing federation",
    )
    _log_level_argument(parser)


def _worker(args: argparse.Namespace) -> int:
    config = _serve_config(args.config)
    from ranvier.replication.worker import WorkerServer, open_worker

    try:
        # Checked before the start, so that a bad role or file is one line.
        WorkerServer(config, args.role)
    except (ConfigError, ValueError) as exc:
        raise _CommandError(str(exc)) from None
    return _run_until_signalled(config, args.log_level, lambda: open_worker(config, args.role))


# --- status -------------------------------------------------------------------------


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(
        parser,
        "the TOML configuration file whose database is read (default: the built-in"
        " defaults: ./ranvier-data/homeserver.db)",
    )


@dataclass(frozen=True)
class _PartialRoomStatus:
    room_id: str
    joined_via: str
    servers: frozenset[str]
    #: Events of the room whose state is still partial.
    partial_events: int
    #: What the server's resync task last recorded; None if nothing.
    progress: ResyncProgress | None


def _status(args: argparse.Namespace) -> int:
    config = _serve_config(args.config)
    database = config.paths.database
    rooms = _read_partial_rooms(database)
    if not rooms:
        print(f"no room has partial state in {database}")
        return 0
    count = f"{len(rooms)} room" if len(rooms) == 1 else f"{len(rooms)} rooms"
    print(f"{count} with partial state in {database}")
    for room in rooms:
        print(room.room_id)
        print(f"  partial-state events: {room.partial_events}")
        print(f"  joined via: {room.joined_via}")
        print(f"  servers known: {', '.join(sorted(room.servers)) or 'none'}")
        for line in _progress_lines(room.progress, now_ms=int(time.time() * 1000)):
            print(f"  {line}")
    return 0


def _progress_lines(progress: ResyncProgress | None, *, now_ms: int) -> list[str]:
    """How far the room's resync had come when the server last recorded it:
    ``resync: walking, 1,204 of 2,000 events, via a.example:8448, attempt 2,
    updated 3 s ago``, and the last error if there was one.
    """
    if progress is None:
        return ["resync: no progress recorded"]
    parts = [progress.phase]
    if progress.events_total:
        parts.append(f"{progress.events_resynced:,} of {progress.events_total:,} events")
    if progress.server is not None:
        parts.append(f"via {progress.server}")
    if progress.attempts:
        parts.append(f"attempt {progress.attempts}")
    parts.append(f"updated {_age(now_ms - progress.updated_ts)}")
    lines = [f"resync: {', '.join(parts)}"]
    if progress.last_error is not None:
        # One line, whatever the error's text holds.
        lines.append(f"last error: {' '.join(progress.last_error.split())}")
    return lines


def _age(milliseconds: int) -> str:
    # A record from a clock ahead of ours reads as just made.
    seconds = max(0, milliseconds) // 1000
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _read_partial_rooms(database: Path) -> list[_PartialRoomStatus]:
    """The partial-state rooms in ``database``, read without writing to it.

    The connection is read-only, so this is safe beside a running server
    (the database is in WAL mode: it neither waits for the server nor holds
    it up) and never creates or migrates a database.
    """
    # Imported here, as the server is for serve: keygen needs none of it.
    from ranvier.storage import SCHEMA_VERSION
    from ranvier.storage.connections import open_reader
    from ranvier.storage.reads import (
        get_partial_state_events,
        get_partial_state_rooms,
        get_resync_progress,
    )
    from ranvier.storage.schema import schema_version

    if not database.is_file():
        raise _CommandError(f"no database at {database}")
    try:
        conn = open_reader(database)
    except sqlite3.Error as exc:
        raise _CommandError(f"cannot open the database {database}: {exc}") from None
    try:
        version = schema_version(conn)
        if version == 0:
            raise _CommandError(f"{database} is not a ranvier database (it has no schema)")
        if version > SCHEMA_VERSION:
            raise _CommandError(
                f"{database} has schema version {version}, newer than this ranvier's"
                f" ({SCHEMA_VERSION}): upgrade ranvier to read it"
            )
        # One read transaction, so the rooms and their counts are of one moment.
        conn.execute("BEGIN")
        rooms = get_partial_state_rooms(conn)
        # A database no server of this version has opened yet has no record
        # of progress: status never migrates.
        progress = get_resync_progress(conn) if _has_table(conn, "resync_progress") else {}
        return [
            _PartialRoomStatus(
                room_id,
                room.joined_via,
                room.servers,
                len(get_partial_state_events(conn, room_id)),
                progress.get(room_id),
            )
            for room_id, room in sorted(rooms.items())
        ]
    except sqlite3.Error as exc:
        raise _CommandError(f"cannot read the database {database}: {exc}") from None
    finally:
        conn.close()


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return found is not None


# --- backup -------------------------------------------------------------------------


def _backup_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(
        parser,
        "the TOML configuration file of the server to back up (default: the built-in"
        " defaults: data in ./ranvier-data)",
    )
    parser.add_argument(
        "destination",
        type=Path,
        metavar="DEST",
        help="the directory the copies go to; it must not exist or be empty",
    )


def _backup(args: argparse.Namespace) -> int:
    """Copy the database (consistently, beside a running server), the signing
    key and the TLS files into DEST; media is left to rsync.
    """
    from ranvier.backup import BackupError, backup_data

    config = _serve_config(args.config)
    try:
        report = backup_data(config, args.destination)
    except BackupError as exc:
        raise _CommandError(str(exc)) from None
    database = report.database
    print(
        f"copied the database {database.source} to {database.copy}"
        f" ({report.database_pages:,} pages, integrity ok)"
    )
    for copied in report.files:
        print(f"copied {copied.source} to {copied.copy}")
    media = report.media_store
    print(
        f"media files are not copied: copy the media store {media} after this, for example"
        f" with rsync -a {media}/ {args.destination / 'media'}/"
    )
    return 0


# --- register-user ------------------------------------------------------------------


def _register_user_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--user",
        required=True,
        metavar="NAME",
        help="the new user's localpart (alice) or full user ID (@alice:example.org)",
    )
    parser.add_argument(
        "--password",
        required=True,
        metavar="PW",
        help="the password; '-' reads it from the first line of stdin, which keeps it out"
        " of the shell's history and the process list",
    )
    parser.add_argument("--admin", action="store_true", help="make the user a server administrator")
    _config_argument(
        parser,
        "the TOML configuration file whose database gets the account (default: the"
        " built-in defaults: ./ranvier-data/homeserver.db)",
    )


def _register_user(args: argparse.Namespace) -> int:
    config = _serve_config(args.config)
    password = _read_password(args.password)
    localpart = _localpart_of(args.user, config.server_name)
    print(_create_account(config, localpart, password, admin=args.admin))
    return 0


def _read_password(value: str) -> str:
    if value != "-":
        return value
    line = sys.stdin.readline()
    password = line.removesuffix("\n").removesuffix("\r")
    if not password:
        raise _CommandError("no password on stdin (--password - reads its first line)")
    return password


def _localpart_of(user: str, server_name: str) -> str:
    if user.startswith("@"):
        localpart, _, server = user[1:].partition(":")
        if server != server_name:
            raise _CommandError(
                f"{user} is not a user ID of this server ({server_name}); give the localpart"
            )
        user = localpart
    # As Synapse's shared-secret registration does: user IDs are lower case.
    return user.lower()


def _create_account(config: Config, localpart: str, password: str, *, admin: bool) -> str:
    """Make the account in the configured database and return its user ID."""
    # Imported here, as the server is for serve: keygen needs none of it.
    from ranvier.core.accounts import Accounts

    async def register(storage: Storage) -> str:
        accounts = Accounts(server_name=config.server_name, store=storage.accounts)
        registration = await accounts.register(localpart, password, admin=admin, login=False)
        return registration.user_id

    return _with_storage(config, register)


def _with_storage(config: Config, act: Callable[[Storage], Awaitable[_T]]) -> _T:
    """Run ``act`` on the configured database, through a storage actor of its
    own, and turn what can go wrong into a message.

    A server running on the same database meanwhile is no obstacle: SQLite
    in WAL mode lets the two take turns, and the server sees the writes at
    once.
    """
    from ranvier.errors import MatrixError
    from ranvier.storage import Storage

    database = config.paths.database

    async def run() -> _T:
        storage = Storage(database, synchronous=config.database.synchronous)
        failure: Exception | None = None
        done: list[_T] = []
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(storage.run)
                done.append(await act(storage))
            except Exception as exc:
                failure = exc
            finally:
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return done[0]

    try:
        database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return trio.run(run)
    except MatrixError as exc:
        raise _CommandError(exc.message) from None
    except sqlite3.Error as exc:
        raise _CommandError(f"cannot use the database {database}: {exc}") from None
    except OSError as exc:
        raise _CommandError(describe_os_error(exc)) from None


# --- registration-token -------------------------------------------------------------


def _registration_token_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(
        parser,
        "the TOML configuration file whose database holds the tokens (default: the"
        " built-in defaults: ./ranvier-data/homeserver.db)",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", dest="action")
    actions.required = True
    new = actions.add_parser("new", help="make a token and print it")
    chosen = new.add_mutually_exclusive_group()
    chosen.add_argument("--token", help="the token itself: 1 to 64 of A-Z a-z 0-9 . _ ~ -")
    chosen.add_argument("--length", type=int, help="the length of a random token (default: 16)")
    new.add_argument(
        "--uses-allowed", type=int, metavar="N", help="registrations it allows (default: no limit)"
    )
    new.add_argument(
        "--expiry-time",
        type=int,
        metavar="MS",
        help="when it stops being valid, in milliseconds since the epoch (default: never)",
    )
    listing = actions.add_parser(
        "list", help="print each token: uses allowed, pending, completed, expiry time"
    )
    validity = listing.add_mutually_exclusive_group()
    validity.add_argument("--valid", action="store_true", help="only the tokens valid now")
    validity.add_argument(
        "--invalid", action="store_true", help="only the tokens expired or used up"
    )
    delete = actions.add_parser("delete", help="delete a token")
    delete.add_argument("token", help="the token to delete")


def _registration_token(args: argparse.Namespace) -> int:
    config = _serve_config(args.config)
    for line in _run_with_registration_tokens(config, args):
        print(line)
    return 0


def _run_with_registration_tokens(config: Config, args: argparse.Namespace) -> list[str]:
    """Do the action ``args`` names on the configured database's tokens,
    through a storage actor of its own as ``register-user`` does; the lines
    to print.
    """
    from ranvier.core.registration_tokens import RegistrationTokens

    async def act(storage: Storage) -> list[str]:
        tokens = RegistrationTokens(storage.registration_tokens)
        if args.action == "new":
            record = await tokens.create(
                args.token,
                length=args.length,
                uses_allowed=args.uses_allowed,
                expiry_time=args.expiry_time,
            )
            return [record.token]
        if args.action == "delete":
            await tokens.delete(args.token)
            return [f"deleted {args.token}"]
        valid = True if args.valid else False if args.invalid else None
        return [
            f"{record.token}\tuses_allowed={_or_none(record.uses_allowed)}"
            f"\tpending={record.pending}\tcompleted={record.completed}"
            f"\texpiry_time={_or_none(record.expiry_time)}"
            for record in await tokens.list(valid)
        ]

    return _with_storage(config, act)


def _or_none(value: int | None) -> str:
    return "none" if value is None else str(value)


# --- server-notice ------------------------------------------------------------------

#: Where ``server-notice`` finds an admin's access token: the environment
#: keeps it out of the process list and the shell's history.
_ADMIN_TOKEN_VARIABLE: Final = "RANVIER_ADMIN_TOKEN"


def _server_notice_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "user", help="the local user to tell: a localpart (alice) or user ID (@alice:example.org)"
    )
    parser.add_argument("message", help="the notice's text")
    parser.add_argument(
        "--notice-type",
        metavar="TYPE",
        help="the notice's server_notice_type (m.server_notice.usage_limit_reached)",
    )
    _config_argument(
        parser,
        "the TOML configuration file of the running server (default: the built-in defaults)",
    )
    parser.add_argument(
        "--url",
        metavar="URL",
        help="the running server's client API (default: its first client listener)",
    )


def _server_notice(args: argparse.Namespace) -> int:
    """Send the notice through the running server's admin API.

    Not through the database, as ``register-user`` writes: a notice makes a
    room and events, which only the running server may write (its room
    locks, its event queues, the syncs it wakes). The server must be running
    with ``[server_notices]`` set, and ``RANVIER_ADMIN_TOKEN`` must hold a
    server admin's access token.
    """
    import httpx

    from ranvier.core.server_notices import notice_content

    config = _serve_config(args.config)
    token = os.environ.get(_ADMIN_TOKEN_VARIABLE)
    if not token:
        raise _CommandError(f"set {_ADMIN_TOKEN_VARIABLE} to the access token of a server admin")
    localpart = _localpart_of(args.user, config.server_name)
    url = args.url if args.url is not None else _client_url(config)
    body = {
        "user_id": f"@{localpart}:{config.server_name}",
        "content": notice_content(args.message, server_notice_type=args.notice_type),
    }
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/_synapse/admin/v1/send_server_notice",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60.0,
        )
    except httpx.HTTPError as exc:
        raise _CommandError(f"cannot reach the server at {url}: {exc}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code != 200 or not isinstance(answer, dict):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise _CommandError(
            f"the server answered {response.status_code}: {error or response.text[:200]}"
        )
    print(answer.get("event_id"))
    return 0


def _client_url(config: Config) -> str:
    """The base URL of the configured server's first client listener."""
    for listener in config.listeners:
        if listener.type != "client":
            continue
        if listener.port == 0:
            break
        host = f"[{listener.host}]" if ":" in listener.host else listener.host
        scheme = "https" if listener.uses_tls else "http"
        return f"{scheme}://{host}:{listener.port}"
    raise _CommandError("the configuration names no client listener's port: give --url")


_COMMANDS: list[_Command] = [
    _Command(
        "keygen",
        "create a signing key file (Synapse's format)",
        _keygen_arguments,
        _keygen,
    ),
    _Command(
        "serve",
        "run the homeserver until SIGINT or SIGTERM",
        _serve_arguments,
        _serve,
    ),
    _Command(
        "worker",
        "run a worker process (federation_reader, client_reader or federation_sender)"
        " beside a main process, until SIGINT or SIGTERM",
        _worker_arguments,
        _worker,
    ),
    _Command(
        "status",
        "list the rooms joined with partial state whose full state is still to come",
        _status_arguments,
        _status,
    ),
    _Command(
        "backup",
        "copy the database, signing key and TLS files into a new directory, whether or not"
        " the server runs",
        _backup_arguments,
        _backup,
    ),
    _Command(
        "register-user",
        "make an account in the configured database, whether or not the server runs",
        _register_user_arguments,
        _register_user,
    ),
    _Command(
        "registration-token",
        "make, list or delete the tokens that registration asks for, whether or not the"
        " server runs",
        _registration_token_arguments,
        _registration_token,
    ),
    _Command(
        "server-notice",
        "send a server notice to a local user through the running server's admin API",
        _server_notice_arguments,
        _server_notice,
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
