"""Sessions: login, refresh rotation, logout, passwords and the revocation set; `routes.py` is their HTTP."""
