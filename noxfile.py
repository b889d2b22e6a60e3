"""Developer tasks: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s interop`,
`nox -s sqlite_latest`, `nox -s bench [-- NAME]`."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    # The interop tests need a Synapse, which only the interop session installs.
    session.run("pytest", "--ignore=tests/interop", *session.posargs)


@nox.session
def sqlite_latest(session: nox.Session) -> None:
    """The full-text index's deletes on the newest SQLite (pysqlite3-binary's),
    where they take FTS5's ``secure-delete`` (3.42 and later) rather than the
    index's scrub. Only these tests: pysqlite3 reports primary result codes
    where Python's ``sqlite3`` reports extended ones, which storage reads to
    tell a foreign key's failure (a partial-state conflict, a purged room)."""
    session.install("-e", ".[test]", "pysqlite3-binary")
    session.run(
        "pytest",
        "tests/storage/test_search_scrub.py",
        "tests/storage/test_search_storage.py",
        "tests/storage/test_room_purge.py",
        "tests/storage/test_redacted_content.py",
        "tests/api/test_search_scrub_api.py",
        *session.posargs,
        env={"RANVIER_TEST_SQLITE": "pysqlite3"},
    )


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.8")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test]", "mypy>=1.13")
    session.run("mypy", "--strict", "src/ranvier")


@nox.session
def interop(session: nox.Session) -> None:
    """ranvier against a real Synapse on loopback: tests/interop."""
    session.install("-e", ".[test]")
    # Synapse gets a virtualenv of its own, so its pinned dependencies never
    # change what ranvier is tested with. It is AGPL-licensed and is only
    # run as a program, never imported.
    synapse_env = Path(session.virtualenv.location) / "synapse"
    synapse_python = synapse_env / "bin" / "python"
    if not synapse_python.exists():
        session.run("python", "-m", "venv", str(synapse_env))
    session.run(
        str(synapse_python),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "matrix-synapse>=1.163",
        external=True,
    )
    session.run(
        "pytest",
        "tests/interop",
        *session.posargs,
        env={"RANVIER_SYNAPSE_PYTHON": str(synapse_python)},
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark, or the ones named after `--`; results in bench/results/."""
    # Synapse is the reference for the state resolution benchmark. It is
    # large and AGPL-licensed, so it is installed here as a library only,
    # never as a dependency of ranvier.
    session.install("-e", ".[test]", "matrix-synapse>=1.135")
    session.run("python", "-m", "bench", *session.posargs)
