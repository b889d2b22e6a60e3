"""Settings shared by the whole suite."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

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
