"""Hypothesis settings profiles for the property-based suites (``test_fuzz_properties.py``,
``test_sip_properties.py``).

* ``ci`` (the default, what ``make test`` runs): a bounded number of examples, no deadline
  (a loaded CI machine must not turn slowness into failures), derandomized so that a run is
  reproducible, no example database written into the working tree. About a minute in all.
* ``nightly`` (``HYPOTHESIS_PROFILE=nightly``): random, 10,000 examples a test, with the
  example database, so that every run explores new inputs. Such a test runs for minutes, so
  :data:`TIMEOUT` lifts pytest-timeout's 120 s for it (``pytestmark`` in each suite).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True,
                          database=None, print_blob=True, suppress_health_check=_SLOW_OK)
settings.register_profile("nightly", max_examples=10_000, deadline=None,
                          print_blob=True, suppress_health_check=_SLOW_OK)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
#: pytest-timeout's limit for a property test: none in the nightly profile, else the default.
TIMEOUT = 0 if PROFILE == "nightly" else 120
