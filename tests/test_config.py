"""Owns the TOML-to-Config contract: every key of SPEC's Config section, defaults, validation and masking.

Must not: build configs any other way than from TOML text (the only test module that writes TOML),
or start servers.
"""

from __future__ import annotations

import ipaddress
import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.config import Config, Rate, load_config, masked
from gateway.core.errors import ConfigError
from tests.support import OLD_SECRET, SECRET, write_toml

__all__: list[str] = []

ROUTE = '[[routes]]\nprefix = "/api"\nupstream = "http://127.0.0.1:9000"\n'

FULL = """
[server]
host = "0.0.0.0"
port = 9443
public_origin = "https://App.Example.com"
auth_prefix = "/gw-auth"
workers = 4
trusted_proxies = ["10.0.0.0/8", "192.168.1.7", "fd00::/8"]
tls_cert = "tls/cert.pem"
tls_key = "tls/key.pem"

[store]
url = "sqlite:///data/gw.db"

[tokens]
algorithm = "HS256"
secret = "${GW_TEST_SECRET}"
previous_secrets = ["${GW_TEST_OLD_SECRET}"]
refresh_secret = "refresh-secret-refresh-secret-0123456789"
issuer = "https://issuer.example"
audience = "my-api"
access_ttl = "90s"
refresh_ttl = "30d"
session_ttl = "12h"
absolute_ttl = 7776000
reuse_grace = 5
leeway = "1m"
access_delivery = "cookie"

[cookies]
access_name = "at"
refresh_name = "rt"
secure = true
samesite = "Strict"
domain = "example.com"

[csrf]
trusted_origins = ["https://admin.example.com"]

[identity_headers]
user_id = "X-Auth-User"
email = "X-Auth-Email"
session_id = "X-Auth-Session"

[limits]
login = "5/second"
refresh = "100/hour"

[[routes]]
prefix = "/api"
upstream = "http://127.0.0.1:9000"
auth = "optional"
strip_prefix = true
timeout = "2m"
forward_authorization = true
preserve_host = true

[[routes]]
prefix = "/public/"
upstream = "https://static.example.com:8443/base"
auth = "public"
"""


def _load(tmp_path: Path, text: str, name: str = "gateway.toml") -> Config:
    return load_config(write_toml(tmp_path / name, text))


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    return info.value.problems


def _doc(
    *,
    server: str = "",
    tokens: str = "",
    cookies: str = "",
    limits: str = "",
    secret: str = SECRET,
    routes: str = ROUTE,
) -> str:
    """A valid document with extra lines put into its tables (TOML forbids defining a table twice)."""
    return (
        f"[server]\n{server}\n[tokens]\nsecret = {json.dumps(secret)}\n{tokens}\n"
        f"[cookies]\n{cookies}\n[limits]\n{limits}\n{routes}"
    )


@pytest.fixture
def full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("GW_TEST_SECRET", SECRET)
    monkeypatch.setenv("GW_TEST_OLD_SECRET", OLD_SECRET)
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "cert.pem").write_text("cert")
    (tmp_path / "tls" / "key.pem").write_text("key")
    return _load(tmp_path, FULL)


# -- every key parses ----------------------------------------------------------------------------


def test_load_config_full_server_table_parses_every_key(full: Config, tmp_path: Path) -> None:
    s = full.server
    assert (s.host, s.port, s.auth_prefix, s.workers) == ("0.0.0.0", 9443, "/gw-auth", 4)
    assert s.public_origin == "https://app.example.com"
    assert s.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.7/32"),
        ipaddress.ip_network("fd00::/8"),
    )
    # Relative paths are resolved against the config file's folder, not the working directory.
    assert s.tls_cert == (tmp_path / "tls" / "cert.pem").resolve()
    assert s.tls_key == (tmp_path / "tls" / "key.pem").resolve()


def test_load_config_full_tokens_table_parses_every_key(full: Config) -> None:
    t = full.tokens
    assert (t.algorithm, t.secret, t.previous_secrets) == ("HS256", SECRET, (OLD_SECRET,))
    assert t.refresh_secret == "refresh-secret-refresh-secret-0123456789"
    assert (t.issuer, t.audience, t.access_delivery) == ("https://issuer.example", "my-api", "cookie")
    assert t.access_ttl == timedelta(seconds=90)
    assert t.refresh_ttl == timedelta(days=30)
    assert t.session_ttl == timedelta(hours=12)
    assert t.absolute_ttl == timedelta(days=90)
    assert t.reuse_grace == timedelta(seconds=5)
    assert t.leeway == timedelta(minutes=1)


def test_load_config_full_store_cookies_csrf_headers_limits_parse(full: Config, tmp_path: Path) -> None:
    assert full.store.url == "sqlite:///data/gw.db"
    assert full.store.sqlite_path == (tmp_path / "data" / "gw.db").resolve()
    c = full.cookies
    assert (c.access_name, c.refresh_name, c.secure, c.samesite, c.domain) == (
        "at",
        "rt",
        True,
        "Strict",
        "example.com",
    )
    assert full.csrf.trusted_origins == ("https://admin.example.com",)
    h = full.identity_headers
    assert (h.user_id, h.email, h.session_id) == ("X-Auth-User", "X-Auth-Email", "X-Auth-Session")
    assert full.limits.login == Rate(count=5, period_s=1)
    assert full.limits.refresh == Rate(count=100, period_s=3600)


def test_load_config_full_routes_parse_every_key(full: Config) -> None:
    api, public = full.routes
    assert api.prefix == "/api"
    assert api.upstream == "http://127.0.0.1:9000"
    assert (api.auth, api.strip_prefix, api.forward_authorization, api.preserve_host) == ("optional", True, True, True)
    assert api.timeout == timedelta(minutes=2)
    assert public.prefix == "/public"  # a trailing "/" is ignored
    assert public.upstream == "https://static.example.com:8443/base"
    assert public.auth == "public"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [('"90s"', 90), ('"15m"', 900), ('"12h"', 43_200), ('"30d"', 2_592_000), ("45", 45), ("0", 0)],
)
def test_load_config_duration_forms_become_timedelta(tmp_path: Path, raw: str, expected: int) -> None:
    cfg = _load(tmp_path, _doc(tokens=f"leeway = {raw}"))
    assert cfg.tokens.leeway == timedelta(seconds=expected)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("10/minute", Rate(count=10, period_s=60)), ("1/second", Rate(count=1, period_s=1)),
     ("3/hour", Rate(count=3, period_s=3600)), ("7/day", Rate(count=7, period_s=86_400))],
)  # fmt: skip
def test_load_config_rate_forms_parse(tmp_path: Path, raw: str, expected: Rate) -> None:
    assert _load(tmp_path, _doc(limits=f'login = "{raw}"')).limits.login == expected


def test_load_config_workers_auto_means_one_per_cpu(tmp_path: Path) -> None:
    assert _load(tmp_path, _doc(server='workers = "auto"')).server.workers == (os.cpu_count() or 1)


def test_load_config_env_substitution_anywhere_in_any_string(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_SECRET", SECRET)
    monkeypatch.setenv("GW_TEST_HOST", "10.1.2.3")
    monkeypatch.setenv("GW_TEST_A", "one")
    monkeypatch.setenv("GW_TEST_B", "two")
    cfg = _load(
        tmp_path,
        '[tokens]\nsecret = "${GW_TEST_SECRET}"\nissuer = "pre-${GW_TEST_A}-mid-${GW_TEST_B}-post"\n'
        '[[routes]]\nprefix = "/api"\nupstream = "http://${GW_TEST_HOST}:9000"\n',
    )
    assert cfg.tokens.secret == SECRET
    assert cfg.tokens.issuer == "pre-one-mid-two-post"
    assert cfg.routes[0].upstream == "http://10.1.2.3:9000"


def test_load_config_unset_env_variable_is_error_naming_key_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GW_TEST_UNSET", raising=False)
    problems = _problems(
        tmp_path, _doc(routes='[[routes]]\nprefix = "/api"\nupstream = "http://${GW_TEST_UNSET}:9000"\n')
    )
    assert any(p.startswith("routes[0].upstream: ") and "GW_TEST_UNSET" in p for p in problems), problems


# -- defaults ------------------------------------------------------------------------------------


def test_load_config_minimal_file_gets_secure_defaults(tmp_path: Path) -> None:
    cfg = _load(tmp_path, _doc())
    assert cfg.cookies.secure is True
    assert cfg.cookies.samesite == "Lax"
    assert (cfg.cookies.access_name, cfg.cookies.refresh_name, cfg.cookies.domain) == (
        "access_token",
        "refresh_token",
        None,
    )
    assert cfg.tokens.access_delivery == "both"
    assert cfg.tokens.algorithm == "HS256"
    assert (cfg.tokens.issuer, cfg.tokens.audience) == ("gateway", "api")
    assert cfg.tokens.access_ttl == timedelta(minutes=15)
    assert cfg.tokens.refresh_ttl == timedelta(days=30)
    assert cfg.tokens.session_ttl == timedelta(hours=12)
    assert cfg.tokens.absolute_ttl == timedelta(days=90)
    assert cfg.tokens.reuse_grace == timedelta(seconds=10)
    assert cfg.tokens.leeway == timedelta(seconds=30)
    assert (cfg.server.host, cfg.server.port, cfg.server.auth_prefix, cfg.server.workers) == (
        "127.0.0.1",
        8080,
        "/auth",
        1,
    )
    assert cfg.server.trusted_proxies == ()  # no forwarding header is believed unless configured
    assert cfg.server.public_origin is None
    assert cfg.csrf.trusted_origins == ()
    assert cfg.limits.login == Rate(count=10, period_s=60)
    assert cfg.limits.refresh == Rate(count=60, period_s=60)
    h = cfg.identity_headers
    assert (h.user_id, h.email, h.session_id) == ("X-User-Id", "X-User-Email", "X-Session-Id")
    assert cfg.store.sqlite_path == (tmp_path / "gateway.db").resolve()


def test_load_config_route_defaults_require_auth_and_forward_nothing(tmp_path: Path) -> None:
    (route,) = _load(tmp_path, _doc()).routes
    assert route.auth == "required"
    assert (route.strip_prefix, route.forward_authorization, route.preserve_host) == (False, False, False)
    assert route.timeout == timedelta(seconds=30)


# -- unknown keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_doc(tokens="nope = 1"), "tokens.nope: unknown key"),
        (_doc(server='hots = "x"'), "server.hots: unknown key"),
        (_doc(cookies="Secure = true"), "cookies.Secure: unknown key"),
        (_doc(routes=ROUTE + ROUTE.replace("/api", "/b") + "bogus = 1\n"), "routes[1].bogus: unknown key"),
        (_doc() + "[nope]\nx = 1\n", "nope: unknown key"),
        ("toplevel = 1\n" + _doc(), "toplevel: unknown key"),
    ],
)
def test_load_config_unknown_key_is_reported_with_its_path(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _problems(tmp_path, text)


# -- bad values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path"),
    [
        pytest.param(_doc(tokens="access_ttl = -5"), "tokens.access_ttl", id="negative-int-duration"),
        pytest.param(_doc(tokens='leeway = "-5s"'), "tokens.leeway", id="negative-string-duration"),
        pytest.param(_doc(tokens='refresh_ttl = "15 minutes"'), "tokens.refresh_ttl", id="bad-duration-words"),
        pytest.param(_doc(tokens='session_ttl = "1.5h"'), "tokens.session_ttl", id="bad-duration-fraction"),
        pytest.param(_doc(tokens='access_ttl = "0s"'), "tokens.access_ttl", id="zero-access-ttl"),
        pytest.param(_doc(tokens="reuse_grace = true"), "tokens.reuse_grace", id="bool-for-duration"),
        pytest.param(_doc(server="port = true"), "server.port", id="bool-for-port"),
        pytest.param(_doc(server="workers = true"), "server.workers", id="bool-for-workers"),
        pytest.param(_doc(server="workers = 0"), "server.workers", id="zero-workers"),
        pytest.param(_doc(server='workers = "many"'), "server.workers", id="bad-workers-string"),
        pytest.param(_doc(server="port = 70000"), "server.port", id="port-out-of-range"),
        pytest.param(_doc(server='trusted_proxies = ["10.0.0.0/33"]'), "server.trusted_proxies", id="bad-cidr"),
        pytest.param(_doc(server='trusted_proxies = ["proxy.local"]'), "server.trusted_proxies", id="hostname-cidr"),
        pytest.param(_doc(cookies="secure = 1"), "cookies.secure", id="int-for-bool"),
        pytest.param(_doc(cookies='samesite = "Lenient"'), "cookies.samesite", id="bad-samesite"),
        pytest.param(
            _doc(cookies='samesite = "None"\nsecure = false'), "cookies.samesite", id="samesite-none-insecure"
        ),
        pytest.param(_doc(secret="too-short-secret"), "tokens.secret", id="short-hs256-secret"),
        pytest.param(_doc(tokens='algorithm = "none"'), "tokens.algorithm", id="alg-none"),
        pytest.param(_doc(tokens='algorithm = "HS512"'), "tokens.algorithm", id="alg-unsupported"),
        pytest.param(_doc(tokens='access_delivery = "header"'), "tokens.access_delivery", id="bad-delivery"),
        pytest.param(_doc(limits='login = "10/fortnight"'), "limits.login", id="bad-rate-unit"),
        pytest.param(_doc(limits='refresh = "0/minute"'), "limits.refresh", id="zero-rate"),
        pytest.param(_doc(limits="login = 10"), "limits.login", id="int-rate"),
        pytest.param(
            _doc(routes=ROUTE.replace("http://127.0.0.1:9000", "ftp://h")), "routes[0].upstream", id="upstream-ftp"
        ),
        pytest.param(_doc(routes=ROUTE.replace("http://", "")), "routes[0].upstream", id="upstream-no-scheme"),
        pytest.param(
            _doc(routes=ROUTE.replace("127.0.0.1:9000", ":9000")), "routes[0].upstream", id="upstream-no-host"
        ),
        pytest.param(_doc(routes=ROUTE.replace("9000", "99999")), "routes[0].upstream", id="upstream-bad-port"),
        pytest.param(_doc(routes=ROUTE.replace('"/api"', '"api"')), "routes[0].prefix", id="prefix-no-slash"),
        pytest.param(_doc(routes=ROUTE + 'auth = "maybe"\n'), "routes[0].auth", id="bad-auth-mode"),
        pytest.param(_doc(routes=ROUTE + "timeout = 0\n"), "routes[0].timeout", id="zero-timeout"),
        pytest.param(_doc(routes='[[routes]]\nprefix = "/api"\n'), "routes[0].upstream", id="missing-upstream"),
        pytest.param(
            _doc(routes=ROUTE + ROUTE.replace('"/api"', '"/api/"')), "routes[1].prefix", id="duplicate-prefix"
        ),
        pytest.param(_doc(routes=ROUTE.replace('"/api"', '"/auth/admin"')), "routes[0].prefix", id="under-auth-prefix"),
        pytest.param(_doc(routes=ROUTE.replace('"/api"', '"/auth"')), "routes[0].prefix", id="equals-auth-prefix"),
        # Prefixes that differ only in case: every path under either would be refused as ambiguous.
        pytest.param(
            _doc(routes=ROUTE + ROUTE.replace('"/api"', '"/API"')), "routes[1].prefix", id="duplicate-prefix-but-case"
        ),
        pytest.param(
            _doc(routes=ROUTE.replace('"/api"', '"/x/stra\u00dfe"') + ROUTE.replace('"/api"', '"/X/STRASSE"')),
            "routes[1].prefix",
            id="duplicate-prefix-but-casefold",
        ),
        pytest.param(
            _doc(routes=ROUTE.replace('"/api"', '"/AUTH/admin"')), "routes[0].prefix", id="under-auth-prefix-but-case"
        ),
        pytest.param(
            _doc(routes=ROUTE.replace('"/api"', '"/Auth"')), "routes[0].prefix", id="equals-auth-prefix-but-case"
        ),
    ],
)
def test_load_config_bad_value_is_reported_at_its_path(tmp_path: Path, text: str, path: str) -> None:
    problems = _problems(tmp_path, text)
    assert any(p.startswith(f"{path}: ") for p in problems), problems


@pytest.mark.parametrize(
    "routes",
    [
        pytest.param(ROUTE + ROUTE.replace('"/api"', '"/apix"'), id="apix-is-not-api"),
        pytest.param(ROUTE.replace('"/api"', '"/authx"'), id="authx-is-not-under-auth"),
        pytest.param(ROUTE.replace('"/api"', '"/"'), id="root-route"),
    ],
)
def test_load_config_prefixes_compare_by_whole_segments(tmp_path: Path, routes: str) -> None:
    assert _load(tmp_path, _doc(routes=routes)).routes


def test_load_config_many_problems_are_reported_in_one_error(tmp_path: Path) -> None:
    text = _doc(
        server="port = true\nbogus = 1",
        tokens='access_ttl = "soon"',
        cookies='samesite = "Lenient"',
        limits='login = "lots"',
        secret="short",
        routes=ROUTE + ROUTE.replace("http://", "").replace('"/api"', '"/api/"') + "extra = 1\n",
    )
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    paths = {p.partition(": ")[0] for p in info.value.problems}
    assert paths == {
        "server.port", "server.bogus", "tokens.access_ttl", "tokens.secret", "cookies.samesite",
        "limits.login", "routes[1].upstream", "routes[1].extra",
    }  # fmt: skip
    assert info.value.source == str(tmp_path / "gateway.toml")


def test_load_config_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    assert info.value.source == str(tmp_path / "absent.toml")
    assert "cannot read" in info.value.problems[0]


def test_load_config_toml_syntax_error_is_config_error(tmp_path: Path) -> None:
    assert "not valid TOML" in _problems(tmp_path, "[tokens\nsecret = 1\n")[0]


# -- paths ---------------------------------------------------------------------------------------


def test_load_config_sqlite_url_is_relative_to_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(write_toml(tmp_path / "etc" / "gw.toml", '[store]\nurl = "sqlite:///data/g.db"\n' + _doc()))
    assert cfg.store.sqlite_path == (tmp_path / "etc" / "data" / "g.db").resolve()


def test_load_config_sqlite_url_with_absolute_path_stays_absolute(tmp_path: Path) -> None:
    target = tmp_path / "abs" / "g.db"
    cfg = _load(tmp_path, f'[store]\nurl = "sqlite:///{target}"\n' + _doc(), name="gw.toml")
    assert cfg.store.sqlite_path == target.resolve()


def test_load_config_postgresql_url_has_no_sqlite_path(tmp_path: Path) -> None:
    cfg = _load(tmp_path, '[store]\nurl = "postgresql://gw@db.internal/gateway"\n' + _doc())
    assert cfg.store.url == "postgresql://gw@db.internal/gateway"
    assert cfg.store.sqlite_path is None


# -- secrets -------------------------------------------------------------------------------------


def test_masked_hides_every_secret_and_store_password(tmp_path: Path) -> None:
    refresh = "refresh-secret-refresh-secret-0123456789"
    db_password = "Db-PassWord-42"
    cfg = _load(
        tmp_path,
        f'[store]\nurl = "postgresql://gw:{db_password}@db.internal:5432/gateway"\n'
        + _doc(tokens=f'previous_secrets = ["{OLD_SECRET}"]\nrefresh_secret = "{refresh}"'),
    )
    view = masked(cfg)
    text = json.dumps(view)
    for secret in (SECRET, OLD_SECRET, refresh, db_password):
        assert secret not in text
    assert isinstance(view, dict)
    assert view["tokens"]["secret"] == "***"
    assert view["tokens"]["refresh_secret"] == "***"
    assert view["tokens"]["previous_secrets"] == ["***"]
    assert view["store"]["url"] == "postgresql://gw:***@db.internal:5432/gateway"


def test_masked_hides_password_given_as_url_query_parameter(tmp_path: Path) -> None:
    cfg = _load(tmp_path, '[store]\nurl = "postgresql://gw@db/gateway?sslmode=require&password=Qu3ry-Pw"\n' + _doc())
    assert "Qu3ry-Pw" not in json.dumps(masked(cfg))


def test_masked_prints_durations_and_rates_as_written_in_toml(tmp_path: Path) -> None:
    view = masked(_load(tmp_path, _doc(tokens='access_ttl = 90\nleeway = "0s"')))
    assert isinstance(view, dict)
    assert view["tokens"]["access_ttl"] == "90s"
    assert view["tokens"]["refresh_ttl"] == "30d"
    assert view["tokens"]["session_ttl"] == "12h"
    assert view["tokens"]["leeway"] == "0s"
    assert view["limits"] == {"login": "10/minute", "refresh": "60/minute", "email": "5/hour"}
    assert view["routes"][0]["timeout"] == "30s"


def test_masked_view_is_json_and_keeps_non_secret_values(tmp_path: Path) -> None:
    view = json.loads(json.dumps(masked(_load(tmp_path, _doc(server='trusted_proxies = ["10.0.0.0/8"]')))))
    assert view["server"]["trusted_proxies"] == ["10.0.0.0/8"]
    assert view["routes"][0]["upstream"] == "http://127.0.0.1:9000"
    assert view["cookies"]["secure"] is True


@pytest.mark.parametrize("key", ["secret", "refresh_secret"])
def test_load_config_mistyped_secret_value_is_not_echoed(tmp_path: Path, key: str) -> None:
    leaked = "Le4ked-Secret-Le4ked-Secret-0123456789"
    text = f'[tokens]\n{key} = ["{leaked}"]\n' + ("" if key == "secret" else f'secret = "{SECRET}"\n') + ROUTE
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert any(p.startswith(f"tokens.{key}: ") for p in info.value.problems)
    assert leaked not in str(info.value)


def test_load_config_short_secret_error_does_not_echo_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, _doc(secret="Sh0rt-S3cret"))
    assert "Sh0rt-S3cret" not in str(info.value)


def test_config_repr_does_not_show_secrets(tmp_path: Path) -> None:
    cfg = _load(tmp_path, '[store]\nurl = "postgresql://gw:Db-PassWord-42@db/gateway"\n' + _doc())
    assert SECRET not in repr(cfg)
    assert "Db-PassWord-42" not in repr(cfg)


# -- accounts and mail (issue 12) ----------------------------------------------------------------


def _accounts_doc(accounts: str = "", email: str = "", limits: str = "") -> str:
    return _doc(limits=limits) + f"\n[accounts]\n{accounts}\n[email]\n{email}\n"


def test_load_config_accounts_email_and_email_limit_parse(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        _accounts_doc(
            'signup = true\nrequire_verified_email = true\nverify_ttl = "2h"\nreset_ttl = 600\nlink_base = "https://app.example.com/"',
            'smtp_url = "smtps://mailer:p%40ss@smtp.example.com:465"\nfrom = "Example <no-reply@example.com>"',
            'email = "3/day"',
        ),
    )
    assert cfg.accounts.signup and cfg.accounts.require_verified_email
    assert (cfg.accounts.verify_ttl, cfg.accounts.reset_ttl) == (timedelta(hours=2), timedelta(minutes=10))
    assert cfg.accounts.link_base == "https://app.example.com"
    assert cfg.email.smtp_url == "smtps://mailer:p%40ss@smtp.example.com:465"
    assert cfg.email.sender == "Example <no-reply@example.com>"
    assert cfg.limits.email == Rate(count=3, period_s=86400)
    shown = json.dumps(masked(cfg))
    assert "p%40ss" not in shown and "mailer:***@smtp.example.com" in shown
    assert masked(cfg)["email"]["from"] == "Example <no-reply@example.com>"  # type: ignore[index]
    assert "p%40ss" not in repr(cfg)


def test_load_config_accounts_defaults_are_off(tmp_path: Path) -> None:
    cfg = _load(tmp_path, _doc())
    assert not cfg.accounts.signup and not cfg.accounts.require_verified_email
    assert (cfg.accounts.verify_ttl, cfg.accounts.reset_ttl) == (timedelta(hours=24), timedelta(minutes=30))
    assert cfg.limits.email == Rate(count=5, period_s=3600)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        pytest.param(_accounts_doc("signup = 1"), "accounts.signup", id="int-for-bool"),
        pytest.param(_accounts_doc('verify_ttl = "0s"'), "accounts.verify_ttl", id="zero-ttl"),
        pytest.param(_accounts_doc('reset_ttl = "soon"'), "accounts.reset_ttl", id="bad-ttl"),
        pytest.param(_accounts_doc('link_base = "javascript:alert(1)"'), "accounts.link_base", id="bad-link-base"),
        pytest.param(_accounts_doc('link_base = "https://x/?a=1"'), "accounts.link_base", id="link-base-query"),
        pytest.param(_accounts_doc("bogus = 1"), "accounts.bogus", id="unknown-accounts-key"),
        pytest.param(_accounts_doc(email='smtp_url = "http://mail:25"'), "email.smtp_url", id="bad-scheme"),
        pytest.param(_accounts_doc(email='smtp_url = "smtp://"'), "email.smtp_url", id="no-host"),
        pytest.param(_accounts_doc(email='smtp_url = "smtp://h:99999"'), "email.smtp_url", id="bad-port"),
        pytest.param(_accounts_doc(email='from = "not an address"'), "email.from", id="bad-from"),
        pytest.param(_accounts_doc(email='from = "a@b.c\\r\\nBcc: x@evil.example"'), "email.from", id="from-crlf"),
        pytest.param(_accounts_doc(email="port = 25"), "email.port", id="unknown-email-key"),
        pytest.param(_accounts_doc(limits='email = "5/fortnight"'), "limits.email", id="bad-email-rate"),
    ],
)
def test_load_config_bad_accounts_value_is_reported_at_its_path(tmp_path: Path, text: str, path: str) -> None:
    problems = _problems(tmp_path, text)
    assert any(p.startswith(f"{path}: ") for p in problems), problems
