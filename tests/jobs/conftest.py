"""Fixtures of the job tests: the store backends (SQLite and PostgreSQL)."""

from tests.jobs.stores import backend

__all__ = ["backend"]
