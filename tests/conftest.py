import os

from hypothesis import HealthCheck, settings

from helpers import data, dataset, tiny  # noqa: F401 (fixtures shared by the test files)

# "ci": derandomized, so CI never flakes; "thorough": run by hand before closing work on the engine.
settings.register_profile("ci", derandomize=True, max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
