"""Machine clients (client credentials): their rules in `service.py`, `POST /auth/token` in `routes.py`."""
