"""What starting a server loads: libraries that only some servers use stay
unloaded until used, as each costs memory in every process (the joins
benchmark's peak memory counts it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: Loaded only by the feature that needs it: PyJWT and the cryptography
#: package under it (single sign-on's ID tokens, some 9 MiB), Pillow
#: (thumbnails).
LAZY = ("jwt", "cryptography", "PIL")


@pytest.mark.parametrize("module", LAZY)
def test_a_server_loads_no_optional_library_until_it_is_used(module: str) -> None:
    program = f"import sys, ranvier, ranvier.server, ranvier.cli; print({module!r} in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", program], check=True, capture_output=True, text=True, timeout=120
    ).stdout.strip()
    assert loaded == "False"
