"""Developer tasks: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s bench [-- NAME]`."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


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
def bench(session: nox.Session) -> None:
    """Every benchmark, or the ones named after `--`; results in bench/results/."""
    # Synapse is the reference for the state resolution benchmark. It is
    # large and AGPL-licensed, so it is installed here as a library only,
    # never as a dependency of ranvier.
    session.install("-e", ".[test]", "matrix-synapse>=1.135")
    session.run("python", "-m", "bench", *session.posargs)
