"""Settings shared by the whole suite."""

from __future__ import annotations

import os
import sys

from hypothesis import HealthCheck, settings

if os.environ.get("RANVIER_TEST_SQLITE") == "pysqlite3":
    # `nox -s sqlite_latest`: the tests on the SQLite that pysqlite3-binary
    # builds in, standing in for a system whose Python has a newer SQLite
    # than the one this machine's Python was built with.
    import pysqlite3

    if pysqlite3.sqlite_version_info < (3, 42, 0):
        raise RuntimeError(f"pysqlite3 has SQLite {pysqlite3.sqlite_version}, not 3.42 or later")
    sys.modules["sqlite3"] = pysqlite3

# Property tests draw the same examples on every run, so a run of the suite
# passes or fails on the code alone: an example that fails is found by the
# test run that changed what it tests, not by a later, unrelated one. There
# is no deadline and no check that drawing is slow, since both measure the
# machine's load as much as the code. `--hypothesis-profile=explore` draws
# fresh examples, for looking for new failures on purpose.
settings.register_profile(
    "deterministic",
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("explore", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("deterministic")
