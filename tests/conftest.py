import os

# Routes by the fixed rule unless a test turns measuring on (tests/test_autotune.py): no table written under
# the user's home, and every test computes the same way on every machine.
os.environ["MINIFCN_AUTOTUNE"] = "0"

from hypothesis import HealthCheck, settings

from helpers import data, dataset, tiny  # noqa: F401 (fixtures shared by the test files)

# "ci": derandomized, so CI never flakes; "thorough": run by hand before closing work on the engine.
settings.register_profile("ci", derandomize=True, max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
