"""Authorization: route policies compiled at load and decided per request, roles, grants and their poll.

Must not: render a response (`enforce.py` raises, the middleware renders)."""
