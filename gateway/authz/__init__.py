"""Authorization: route policies compiled at load and decided per request, roles, grants and their poll. Must not: read tokens."""
