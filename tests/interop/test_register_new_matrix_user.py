"""Synapse's own ``register_new_matrix_user`` against ranvier's shared-secret
registration: operators' tooling for Synapse works unchanged.

The script comes with matrix-synapse, so this runs where the other interop
tests do (``nox -s interop``), beside the Synapse they use.
"""

from __future__ import annotations

from pathlib import Path

import trio

from ranvier.config import (
    Config,
    DatabaseConfig,
    ListenerConfig,
    RateLimitConfig,
    RegistrationConfig,
)
from ranvier.server import open_homeserver

from ._synapse import synapse_python

SECRET = "a shared secret"


async def test_synapses_register_new_matrix_user_works_against_us(tmp_path: Path) -> None:
    config = Config(
        server_name="hs.test",
        data_dir=tmp_path / "data",
        listeners=(ListenerConfig(type="client", host="127.0.0.1", port=0),),
        database=DatabaseConfig(synchronous="OFF"),
        ratelimit=RateLimitConfig(enabled=False),
        registration=RegistrationConfig(shared_secret=SECRET),
    )
    script = synapse_python().parent / "register_new_matrix_user"
    async with open_homeserver(config) as server:
        (listener,) = server.listeners
        command = [str(script), "-k", SECRET, "-u", "dave", "-p", "pw-of-dave", listener.url]
        made = await trio.run_process([*command, "--admin"], capture_stdout=True)
        again = await trio.run_process([*command, "--no-admin"], capture_stdout=True, check=False)
        exists_ok = await trio.run_process(
            [*command, "--no-admin", "--exists-ok"], capture_stdout=True
        )
        login = await server.accounts.login_with_password("dave", "pw-of-dave")
        requester = await server.accounts.get_requester(login.access_token)
    assert b"Success!" in made.stdout
    assert again.returncode == 1
    assert b"already taken" in again.stdout
    assert b"User already exists" in exists_ok.stdout
    assert requester is not None
    assert requester.user_id == "@dave:hs.test"
    assert requester.is_admin
