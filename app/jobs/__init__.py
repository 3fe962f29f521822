"""Durable agent jobs: the model, the SQLite store, the worker."""
