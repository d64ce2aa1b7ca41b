"""Self-service accounts: sign-up, email verification, password reset and change, and their mail.

`service` holds the rules, `mail` the templates, `outbox` the sender task, `mailer` the SMTP client,
`routes` the HTTP side (`endpoints(prefix)`, merged by app.py).

Must not: be imported by `sessions/` or the store (accounts build on them, never the reverse).
"""

__all__: list[str] = []
