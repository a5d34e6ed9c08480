"""Fixtures of the infra tests: the tiny model (shared with tests/jobs)."""

from tests.jobs.conftest import tiny_model  # noqa: F401  (the session fixture, for the fake-cluster chain)
