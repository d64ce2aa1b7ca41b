"""The `gateway` command: argv parsing, logging setup, `serve`, `check-config` and the admin commands.

Must not: print a traceback or a secret; every failure is one line on stderr and exit 1 (2 for usage).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import signal
import ssl
import sys
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

from gateway.config import Config, load_config, masked
from gateway.core.errors import ConfigError, GatewayError
from gateway.core.log import JsonFormatter, TextFormatter

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"gateway: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)  # typeshed wants parents of the subparsers' own class
    common.add_argument("--config", default=argparse.SUPPRESS, help="TOML file (default: $GATEWAY_CONFIG, then ./config.toml)")
    top = _Parser(prog="gateway", description="Authentication gateway: a reverse proxy that owns login and sessions.")
    top.add_argument("--config", default=None, help="TOML file (default: $GATEWAY_CONFIG, then ./config.toml)")
    top.add_argument("--version", action="version", version=f"gateway {_version()}")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("serve", parents=[common], help="run the gateway")
    sub.add_parser("check-config", parents=[common], help="validate and print the effective config, secrets masked")
    users = sub.add_parser("users", parents=[common], help="manage users").add_subparsers(dest="action", required=True, parser_class=_Parser)
    add = users.add_parser("add", parents=[common], help="create a user")
    add.add_argument("email")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    users.add_parser("list", parents=[common], help="list users")
    for name in ("disable", "enable"):
        users.add_parser(name, parents=[common], help=f"{name} a user").add_argument("email")
    users.add_parser("verify", parents=[common], help="mark a user's email address verified").add_argument("email")
    users.add_parser(
        "mfa-reset", parents=[common], help="remove every second factor and revoke all sessions"
    ).add_argument("email")
    setpw = users.add_parser("set-password", parents=[common], help="set a new password (revokes all sessions)")
    setpw.add_argument("email")
    setpw.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    roles = users.add_parser("roles", parents=[common], help="change and print a user's roles (tokens from before a change are refused)")
    roles.add_argument("email")
    roles.add_argument("--add", action="append", default=[], metavar="ROLE", help="add a role (repeatable)")
    roles.add_argument("--remove", action="append", default=[], metavar="ROLE", help="remove a role (repeatable)")
    clients = sub.add_parser("clients", parents=[common], help="manage machine clients (client credentials)").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    cadd = clients.add_parser("add", parents=[common], help="create a client; prints its id and, once, its secret")
    cadd.add_argument("name")
    cadd.add_argument("--scope", action="append", default=[], metavar="SCOPE", help="a scope it may ask for (repeatable)")
    clients.add_parser("list", parents=[common], help="list clients")
    clients.add_parser("remove", parents=[common], help="remove a client; its tokens are refused within 1 s").add_argument("client_id")
    check = sub.add_parser("check-policy", parents=[common], help="which rule decides a request (reads config and store only)")
    check.add_argument("method")
    check.add_argument("path")
    caller = check.add_mutually_exclusive_group(required=True)
    caller.add_argument("--email", help="as this user, with the roles the store holds")
    caller.add_argument("--client", metavar="ID", help="as this machine client, with all of its scopes")
    caller.add_argument("--anonymous", action="store_true", help="without a token")
    check.add_argument("--ip", help="the client address (without it, no `networks` criterion matches)")
    check.add_argument("--mfa", action="store_true", help="as a user who logged in with a second factor")
    sessions = sub.add_parser("sessions", parents=[common], help="view and revoke sessions").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    sessions.add_parser("list", parents=[common], help="a user's live sessions").add_argument("email")
    revoke = sessions.add_parser("revoke", parents=[common], help="revoke sessions")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--user", metavar="EMAIL")
    which.add_argument("--session", metavar="ID")
    return top


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("authgateway")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from gateway import __version__

        return __version__


def _config_path(args: argparse.Namespace) -> str:
    return args.config or os.environ.get("GATEWAY_CONFIG") or "config.toml"


def _setup_logging(cfg: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if cfg.log.format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.log.level)
    # aiohttp's own access log would duplicate ours and print client headers.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _read_password(*, from_stdin: bool) -> str:
    if from_stdin:
        # A file written on Windows ends its line with "\r\n"; the "\r" is never part of the password.
        return sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    try:
        with warnings.catch_warnings():
            # Without a terminal getpass would warn over several lines, then read stdin with echo on.
            warnings.simplefilter("error", getpass.GetPassWarning)
            first = getpass.getpass("Password: ")
            again = getpass.getpass("Repeat password: ")
    except getpass.GetPassWarning:
        raise GatewayError("no terminal to prompt for the password; use --password-stdin") from None
    except EOFError:
        raise GatewayError("no password given") from None
    if again != first:
        raise GatewayError("the passwords do not match")
    return first


def _ssl_context(cfg: Config) -> ssl.SSLContext | None:
    if cfg.server.tls_cert is None or cfg.server.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cfg.server.tls_cert, cfg.server.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"server.tls_cert: cannot load certificate and key: {exc}"], source=cfg.source) from None
    return context


def _serve(cfg: Config, config_path: str) -> int:
    from aiohttp import web

    from gateway.app import KEEPALIVE_TIMEOUT, create_app
    from gateway.server.serving import ConnectionGuard, serve
    from gateway.server.workers import WORKER_ENV, supervise
    from gateway.tokens.keyring import KeyRing

    _setup_logging(cfg)
    keyring = KeyRing(cfg.tokens)
    context = _ssl_context(cfg)
    scheme = "https" if context else "http"
    worker = os.environ.get(WORKER_ENV)
    if cfg.server.workers > 1 and worker is None:
        return supervise(os.path.abspath(config_path), cfg.server.workers, stop_timeout=cfg.server.shutdown_timeout.total_seconds() + 5)
    app = create_app(cfg, keyring=keyring)

    async def listen_for_sighup(app: web.Application) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _reload, app, config_path, context)

    app.on_startup.append(listen_for_sighup)
    label = f"gateway {'worker ' + worker + ' ' if worker else ''}listening on {scheme}://{cfg.server.host}:{cfg.server.port}"
    serve(
        app,
        host=cfg.server.host,
        port=cfg.server.port,
        loop=_new_event_loop(),
        guard=ConnectionGuard(
            max_connections=cfg.server.max_connections,
            header_timeout=cfg.server.header_timeout.total_seconds(),
            idle_allowance=KEEPALIVE_TIMEOUT,
        ),
        ssl_context=context,
        reuse_port=worker is not None,
        shutdown_timeout=cfg.server.shutdown_timeout.total_seconds(),
        on_listening=lambda: print(label, file=sys.stderr),
    )
    return 0


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed, else asyncio's. Measured on the proxy path it changes little
    (176 vs 178 us of CPU per request); it stays because bench/RESULTS.md was measured with it."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _reload(app: Any, config_path: str, context: ssl.SSLContext | None) -> None:
    """SIGHUP: re-read the config and apply routes, limits, keys and the TLS certificate in place."""
    from gateway.app import reload_app

    log = logging.getLogger("gateway.proxy")
    try:
        new = load_config(config_path)
        restart = reload_app(app, new)
        if context is not None and new.server.tls_cert is not None and new.server.tls_key is not None:
            # New handshakes use the new certificate; established connections keep theirs.
            context.load_cert_chain(new.server.tls_cert, new.server.tls_key)
    except ConfigError as exc:
        log.error("reload refused, still running the old config: %s", exc)
        return
    except (OSError, ssl.SSLError) as exc:
        log.error("reload: cannot load the TLS certificate, still serving the old one: %s", exc)
        return
    log.warning("reloaded %s: the whole config%s", config_path, f"; restart to apply {', '.join(restart)}" if restart else "")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _admin(cfg: Config, args: argparse.Namespace) -> int:
    from gateway.sessions.service import SessionService
    from gateway.store import open_store
    from gateway.tokens.keyring import KeyRing

    store = await open_store(cfg.store)
    try:
        service = SessionService(store=store, keys=KeyRing(cfg.tokens), config=cfg)
        if args.command == "users":
            if args.action == "add":
                user = await service.add_user(args.email, _read_password(from_stdin=args.password_stdin))
                print(f"created user {user.email} id={user.id}")
            elif args.action == "list":
                unverified = await store.unverified_user_ids()
                for u in await store.list_users():
                    verified = "unverified" if u.id in unverified else "verified"
                    print(f"{u.id}\t{u.email}\t{'disabled' if u.disabled else 'active'}\t{_iso(u.created_at)}\t{verified}")
            elif args.action == "verify":
                user = await service.get_user(args.email)
                await store.set_email_verified(user.id, now=service.clock())
                print(f"verified {user.email}")
            elif args.action in ("disable", "enable"):
                revoked = await service.set_disabled(args.email, disabled=args.action == "disable")
                print(f"{args.action}d {args.email.strip()}; revoked {len(revoked)} session(s)")
            elif args.action == "mfa-reset":
                from gateway.mfa.service import MfaService

                user = await service.get_user(args.email)
                mfa = MfaService(store=store, sessions=service, config=cfg)  # type: ignore[arg-type]
                revoked = await mfa.reset(user.email)
                print(f"second factors removed for {user.email}; revoked {len(revoked)} session(s)")
            elif args.action == "set-password":
                user = await service.get_user(args.email)
                revoked = await service.set_password(user.email, _read_password(from_stdin=args.password_stdin))
                print(f"password set for {user.email}; revoked {len(revoked)} session(s)")
            elif args.action == "roles":
                from gateway.authz.roles import change_roles

                user = await service.get_user(args.email)
                if args.add or args.remove:
                    user = await change_roles(store, user, add=args.add, remove=args.remove, now=service.clock())
                for role in user.roles:
                    print(role)
        elif args.command == "clients":
            from gateway.clients.service import ClientService, FailureThrottle

            clients = ClientService(store=store, keys=service.keys, throttle=FailureThrottle(store, cfg.limits.login))
            if args.action == "add":
                client, secret = await clients.add(args.name, args.scope)
                print(f"client_id: {client.id}\nclient_secret: {secret}")
                print("the secret is shown only this once; store it now", file=sys.stderr)
            elif args.action == "list":
                for c in await clients.list():
                    print(f"{c.id}\t{c.name}\t{' '.join(c.scopes)}\t{_iso(c.created_at)}")
            else:
                await clients.remove(args.client_id)
                print(f"removed client {args.client_id}")
        elif args.command == "check-policy":
            from gateway.authz.check import check_policy

            print("\n".join(await check_policy(cfg, store, service.keys, args)))
        elif args.command == "sessions":
            if args.action == "list":
                user = await service.get_user(args.email)
                for s in await service.list_sessions(user.id):
                    print(f"{s.id}\tcreated={_iso(s.created_at)}\tlast_used={_iso(s.last_used_at)}\texpires={_iso(s.expires_at)}\tip={s.ip}\tua={s.user_agent}")
            elif args.user:
                user = await service.get_user(args.user)
                revoked = await service.revoke_user(user.id, reason="admin")
                print(f"revoked {len(revoked)} session(s) of {user.email}")
            else:
                revoked = await service.revoke_session(args.session, reason="admin")
                if not revoked and await store.find_session(session_id=args.session) is None:
                    raise GatewayError(f"no session {args.session}")
                print(f"revoked {len(revoked)} session(s)")
    finally:
        await store.aclose()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gateway` console script and `python -m gateway`."""
    args = _parser().parse_args(argv)
    path = _config_path(args)
    try:
        # Only serve and check-config need the signing keys; the admin commands never sign a token.
        cfg = load_config(path, signing=args.command in ("serve", "check-config"))
        if args.command == "check-config":
            from gateway.tokens.keyring import KeyRing

            KeyRing(cfg.tokens)
            print(json.dumps(masked(cfg), indent=2))
            return 0
        if args.command == "serve":
            return _serve(cfg, path)
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("gateway.audit").setLevel(logging.WARNING)
        code = asyncio.run(_admin(cfg, args))
        sys.stdout.flush()  # here, so that a reader that went away is an EPIPE caught below, not at exit
        return code
    except BrokenPipeError:
        # The reader went away (`gateway users list | head -1`): nothing is left to tell it, and no
        # one to tell about it. Python would complain again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.source or path}: {problem}", file=sys.stderr)
        return 1
    except GatewayError as exc:
        print(f"gateway: {exc.description or exc.code}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gateway: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
