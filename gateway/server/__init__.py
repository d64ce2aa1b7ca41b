"""Serving: the listening socket with its connection guard, and the worker supervisor."""
