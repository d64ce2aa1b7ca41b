"""Federated login (OpenID Connect): a provider login becomes one of the gateway's own sessions.

`flow` holds the rules of one login and of back-channel logout (pure), `discovery` talks to the
providers over HTTP, `service` links provider identities to local users, `routes` is the HTTP edge.

Must not: let a provider's token reach a cookie, a log or an upstream.
"""
