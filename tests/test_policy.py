"""policy.py on its own: compiling rules, every criterion, deny/allow/mfa precedence, config errors by path."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from gateway.authz.rules import Decision, Policy, compile_policy
from gateway.config import parse_config
from gateway.core.errors import ConfigError


@dataclass(frozen=True)
class Who:
    email: str = "ann@example.com"
    roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    client_id: str = ""
    amr: tuple[str, ...] = ("pwd",)
    claims: Mapping[str, Any] = field(default_factory=dict)


def _policy(allow: Any = None, deny: Any = None) -> Policy:
    problems: list[str] = []
    policy = compile_policy(allow, deny, where="routes[1]", problems=problems)
    assert not problems and policy is not None, problems
    return policy


def _problems(allow: Any = None, deny: Any = None) -> list[str]:
    problems: list[str] = []
    assert compile_policy(allow, deny, where="routes[1]", problems=problems) is None
    return problems


def _at(ip: str | None) -> Any:
    return lambda: None if ip is None else ipaddress.ip_address(ip)


def decide(policy: Policy, who: Who | None, method: str = "GET", path: str = "/admin/x", ip: str | None = "192.0.2.1") -> Decision:
    return policy.decide(who, method, path, _at(ip))


def _spec_example() -> Policy:
    # Compiled inside each test, not at import: the mutation run judges compile_policy by the tests that call it.
    return _policy(
        allow=[{"roles": ["admin"]}, {"emails": ["ops@example.com"], "methods": ["GET"]}],
        deny=[{"methods": ["DELETE"], "roles": ["auditor"]}],
    )


@pytest.mark.parametrize(
    ("who", "method", "outcome", "rule"),
    [
        (Who(roles=("admin",)), "DELETE", "allow", "routes[1].allow[0]"),
        (Who(roles=("admin", "auditor")), "DELETE", "deny", "routes[1].deny[0]"),
        (Who(roles=("admin", "auditor")), "GET", "allow", "routes[1].allow[0]"),
        (Who(email="OPS@Example.com"), "GET", "allow", "routes[1].allow[1]"),
        (Who(email="ops@example.com"), "POST", "deny", "routes[1].allow"),
        (Who(roles=("viewer",)), "GET", "deny", "routes[1].allow"),
        (None, "GET", "login", "routes[1].allow"),
    ],
)
def test_policy_spec_example(who: Who | None, method: str, outcome: str, rule: str) -> None:
    assert decide(_spec_example(), who, method) == Decision(outcome, rule)  # type: ignore[arg-type]


def test_policy_deny_only_passes_others_with_route_path() -> None:
    policy = _policy(deny=[{"roles": ["banned"]}])
    assert decide(policy, Who()) == Decision("allow", "routes[1]")
    assert decide(policy, None) == Decision("allow", "routes[1]")
    assert decide(policy, Who(roles=("banned",))) == Decision("deny", "routes[1].deny[0]")


def test_policy_roles_any_scopes_all() -> None:
    p = _policy(allow=[{"roles": ["a", "b"]}, {"scopes": ["read", "write"]}])
    assert decide(p, Who(roles=("b",))).outcome == "allow"
    assert decide(p, Who(scopes=("read",))).outcome == "deny"
    assert decide(p, Who(scopes=("write", "read", "x"))).outcome == "allow"


def test_policy_rule_needs_every_criterion_it_names() -> None:
    p = _policy(
        allow=[
            {"roles": ["ops"], "scopes": ["deploy"], "clients": ["cl_ci"]},
            {"emails": ["ann@example.com"], "email_domains": ["example.com"], "claims": {"team": "core"}},
        ]
    )
    ci = Who(email="", roles=("ops",), scopes=("deploy",), client_id="cl_ci")
    assert decide(p, ci) == Decision("allow", "routes[1].allow[0]")
    for who in (replace(ci, roles=()), replace(ci, scopes=()), replace(ci, client_id="cl_other")):
        assert decide(p, who) == Decision("deny", "routes[1].allow"), who
    ann = Who(claims={"team": "core"})
    assert decide(p, ann) == Decision("allow", "routes[1].allow[1]")
    for who in (replace(ann, email="bob@example.com"), replace(ann, claims={"team": "web"})):
        assert decide(p, who) == Decision("deny", "routes[1].allow"), who


def test_policy_email_domains_exact_domain_case_insensitive() -> None:
    p = _policy(allow=[{"email_domains": ["example.com"]}])
    assert decide(p, Who(email="x@EXAMPLE.com")).outcome == "allow"
    assert decide(p, Who(email="x@evil-example.com")).outcome == "deny"
    assert decide(p, Who(email="x@example.com.evil.org")).outcome == "deny"
    assert decide(p, Who(email="example.com@evil.org")).outcome == "deny"
    assert decide(p, Who(email="")).outcome == "deny"


def test_policy_claims_values_and_lists_type_strict() -> None:
    p = _policy(allow=[{"claims": {"tier": ["gold", "silver"], "level": 3}}])
    assert decide(p, Who(claims={"tier": "gold", "level": 3})).outcome == "allow"
    assert decide(p, Who(claims={"tier": ["bronze", "silver"], "level": 3})).outcome == "allow"
    assert decide(p, Who(claims={"tier": "gold", "level": "3"})).outcome == "deny"
    assert decide(p, Who(claims={"tier": "gold"})).outcome == "deny"
    flag = _policy(allow=[{"claims": {"beta": True}}])
    assert decide(flag, Who(claims={"beta": 1})).outcome == "deny"
    assert decide(flag, Who(claims={"beta": True})).outcome == "allow"


def test_policy_clients_match_client_id_only() -> None:
    p = _policy(allow=[{"clients": ["cl_billing"]}])
    assert decide(p, Who(email="", client_id="cl_billing")).outcome == "allow"
    assert decide(p, Who(email="cl_billing")).outcome == "deny"


def test_policy_networks_use_given_address_and_mapped_v4() -> None:
    p = _policy(allow=[{"networks": ["10.0.0.0/8", "2001:db8::/32"]}])
    assert decide(p, Who(), ip="10.1.2.3").outcome == "allow"
    assert decide(p, Who(), ip="::ffff:10.1.2.3").outcome == "allow"
    assert decide(p, Who(), ip="2001:db8::1").outcome == "allow"
    assert decide(p, Who(), ip="192.0.2.1").outcome == "deny"
    assert decide(p, Who(), ip=None).outcome == "deny"
    # A request-only rule admits anonymous callers too.
    assert decide(p, None, ip="10.0.0.1").outcome == "allow"


def test_policy_address_read_only_when_a_rule_needs_it() -> None:
    calls: list[int] = []

    def address() -> Any:
        calls.append(1)
        return ipaddress.ip_address("10.0.0.1")

    p = _policy(allow=[{"roles": ["admin"]}])
    p.decide(Who(roles=("admin",)), "GET", "/x", address)
    assert calls == [] and not p.needs_address
    assert _policy(deny=[{"networks": ["10.0.0.0/8"]}]).needs_address


@pytest.mark.parametrize(
    ("glob", "path", "hit"),
    [
        ("/api/admin/*", "/api/admin/users", True),
        ("/api/admin/*", "/api/admin/users/1", False),
        ("/api/admin/*", "/api/admin", False),
        ("/api/admin/**", "/api/admin", True),
        ("/api/admin/**", "/api/admin/", True),
        ("/api/admin/**", "/api/admin/a/b/c", True),
        ("/api/admin/**", "/api/administrator", False),
        ("/api/*/reports", "/api/x/reports", True),
        ("/api/*/reports", "/api/x/y/reports", False),
        ("/api/**/reports", "/api/reports", True),
        ("/api/**/reports", "/api/x/y/reports", True),
        ("/api/r*.csv", "/api/report.csv", True),
        ("/api/r*.csv", "/api/r/x.csv", False),
        ("/api/a.b", "/api/aXb", False),
        ("/api/INDEX", "/api/INDEX", True),
        ("/api/reports", "/api/reports/", True),
        ("/", "/", True),
        ("/**", "/anything/at/all", True),
    ],
)
def test_policy_paths_globs(glob: str, path: str, hit: bool) -> None:
    p = _policy(allow=[{"paths": [glob]}])
    assert (decide(p, Who(), path=path).outcome == "allow") is hit


def test_policy_paths_any_glob_of_the_list_matches() -> None:
    p = _policy(allow=[{"paths": ["/api/reports/**", "/api/*.csv", "/health"]}])
    for path in ("/api/reports/1", "/api/x.csv", "/health"):
        assert decide(p, Who(), path=path) == Decision("allow", "routes[1].allow[0]"), path
    assert decide(p, Who(), path="/api/other").outcome == "deny"


def test_policy_paths_deny_folds_case_allow_does_not() -> None:
    p = _policy(allow=[{"paths": ["/api/**"]}], deny=[{"paths": ["/api/admin/**"]}])
    assert decide(p, Who(), path="/api/ADMIN/x") == Decision("deny", "routes[1].deny[0]")
    only_allow = _policy(allow=[{"paths": ["/api/public/**"]}])
    assert decide(only_allow, Who(), path="/api/PUBLIC/x").outcome == "deny"


@pytest.mark.parametrize(
    ("glob", "path"),
    [
        ("/admin/**", "/ADMIN/x"), ("/admin/**", "/Admin"), ("/admin/**", "/aDmIn/users/1"),
        ("/admin/*/keys", "/admin/x/KEYS"), ("/admin/**", "/adm\u0131n/x"), ("/admin/**", "/adm\u0130n/x"),
        ("/keys/**", "/\u212aeys/1"), ("/keys/**", "/key\u017f"),
        ("/stats/**", "/\ufb06ats/x"),  # "st" ligature: casefold() and upper() spell it "st"
        ("/strasse/**", "/stra\u00dfe/1"),  # sharp s: casefold() and upper() spell it "ss"
        ("/Reports/**", "/reports/1"),  # a glob with capitals folds as well
    ],
)  # fmt: skip
def test_policy_paths_deny_glob_matches_with_or_without_case(glob: str, path: str) -> None:
    # SPEC "Config": a deny glob matches when it matches with or without case, with the same fold
    # the route table uses (gateway.core.casefold); an allow glob only when it matches with case.
    denying = _policy(deny=[{"paths": [glob]}])
    assert decide(denying, Who(), path=path) == Decision("deny", "routes[1].deny[0]"), path
    allowing = _policy(allow=[{"paths": [glob]}])
    assert decide(allowing, Who(), path=path) == Decision("deny", "routes[1].allow"), path


def test_policy_paths_deny_glob_still_matches_with_case_and_not_beyond() -> None:
    p = _policy(deny=[{"paths": ["/admin/**", "/r*.csv"]}])
    for path in ("/admin", "/admin/x", "/r.csv", "/R1.CSV"):
        assert decide(p, Who(), path=path).outcome == "deny", path
    for path in ("/administrator", "/x/admin", "/r/x.csv", "/adm1n", "/\u0280.csv"):
        assert decide(p, Who(), path=path).outcome == "allow", path


def test_policy_methods_exact_upper_case() -> None:
    p = _policy(allow=[{"methods": ["GET", "HEAD"]}])
    assert decide(p, Who(), "HEAD").outcome == "allow"
    assert decide(p, Who(), "get").outcome == "deny"
    assert decide(p, Who(), "POST").outcome == "deny"


def test_policy_mfa_step_up_only_when_otherwise_admitted() -> None:
    p = _policy(allow=[{"roles": ["admin"], "mfa": True}], deny=[{"roles": ["suspended"]}])
    assert decide(p, Who(roles=("admin",))) == Decision("mfa", "routes[1].allow[0]")
    assert decide(p, Who(roles=("admin",), amr=("pwd", "otp", "mfa"))) == Decision("allow", "routes[1].allow[0]")
    assert decide(p, Who(roles=("viewer",))) == Decision("deny", "routes[1].allow")
    assert decide(p, Who(roles=("admin", "suspended"), amr=("mfa",))) == Decision("deny", "routes[1].deny[0]")
    assert decide(p, Who(roles=("admin", "suspended"))) == Decision("deny", "routes[1].deny[0]")
    assert decide(p, None) == Decision("login", "routes[1].allow")


def test_policy_mfa_other_allow_rule_admits_without_step_up() -> None:
    p = _policy(allow=[{"roles": ["admin"], "mfa": True}, {"roles": ["admin"], "methods": ["GET"]}])
    assert decide(p, Who(roles=("admin",)), "GET") == Decision("allow", "routes[1].allow[1]")
    assert decide(p, Who(roles=("admin",)), "POST") == Decision("mfa", "routes[1].allow[0]")


def test_policy_anonymous_refused_not_login_when_no_rule_needs_identity() -> None:
    p = _policy(allow=[{"methods": ["GET"]}])
    assert decide(p, None, "POST") == Decision("deny", "routes[1].allow")


@pytest.mark.parametrize(
    ("allow", "deny", "expected"),
    [
        ([{"foo": 1}], None, "routes[1].allow[0].foo: unknown criterion"),
        ([{}], None, "routes[1].allow[0]: an empty rule"),
        ([], None, "routes[1].allow: must list at least one rule"),
        ({"roles": ["a"]}, None, "routes[1].allow: must be a list of rules"),
        (["admin"], None, "routes[1].allow[0]: must be a table"),
        ([{"roles": "admin"}], None, "routes[1].allow[0].roles: must be a list of strings"),
        ([{"roles": []}], None, "routes[1].allow[0].roles: must not be empty"),
        ([{"roles": ["Admin"]}], None, "routes[1].allow[0].roles: 'Admin' is not a role name"),
        ([{"methods": ["get"]}], None, "routes[1].allow[0].methods: 'get' is not an upper-case HTTP method"),
        ([{"paths": ["api/x"]}], None, "routes[1].allow[0].paths[0]: must start with"),
        ([{"paths": ["/api?x=1"]}], None, "routes[1].allow[0].paths[0]: matches the path only"),
        ([{"paths": ["/api/%2F"]}], None, "routes[1].allow[0].paths[0]: matches the decoded path"),
        ([{"paths": ["/api/../x"]}], None, "routes[1].allow[0].paths[0]: must be a normalized path"),
        ([{"paths": ["/api/a**"]}], None, "routes[1].allow[0].paths[0]: ** must be a whole segment"),
        ([{"networks": ["10.0.0.300/8"]}], None, "routes[1].allow[0].networks: '10.0.0.300/8' is not a CIDR"),
        ([{"claims": {}}], None, "routes[1].allow[0].claims: must be a table"),
        ([{"claims": {"x": {"y": 1}}}], None, "routes[1].allow[0].claims.x: must be a string"),
        ([{"mfa": False}], None, "routes[1].allow[0].mfa: must be true"),
        (None, [{"mfa": True}], "routes[1].deny[0].mfa: only allow rules"),
        ([{"email_domains": ["@example.com"]}], None, "routes[1].allow[0].email_domains: a domain is written without"),
        ([{"roles": ["a"]}], [{"nope": 1}], "routes[1].deny[0].nope: unknown criterion"),
    ],
)
def test_policy_bad_rules_are_problems_naming_their_path(allow: Any, deny: Any, expected: str) -> None:
    problems = _problems(allow, deny)
    assert any(p.startswith(expected) for p in problems), problems


def test_policy_unknown_criterion_lists_the_known_ones() -> None:
    assert _problems([{"role": ["admin"]}]) == [
        "routes[1].allow[0].role: unknown criterion (known: roles, scopes, emails, email_domains, methods, paths, "
        "networks, claims, clients, mfa)"
    ]


@pytest.mark.parametrize(
    "criterion", ["roles", "scopes", "emails", "email_domains", "methods", "paths", "networks", "clients"]
)
def test_policy_list_criterion_not_a_list_or_empty_is_one_problem_at_its_key(criterion: str) -> None:
    assert _problems([{criterion: "x"}]) == [f"routes[1].allow[0].{criterion}: must be a list of strings"]
    assert _problems(None, [{criterion: []}]) == [
        f"routes[1].deny[0].{criterion}: must not be empty (a rule with an empty list could never match)"
    ]


@pytest.mark.parametrize(
    ("criterion", "value", "what"),
    [
        ("roles", "Admin", "a role name"),
        ("scopes", "read write", "a scope"),
        ("scopes", 'say"hi', "a scope"),
        ("scopes", "back\\slash", "a scope"),
        ("methods", "get", "an upper-case HTTP method"),
    ],
)
def test_policy_malformed_name_is_a_problem_saying_what_it_is_not(criterion: str, value: str, what: str) -> None:
    assert _problems([{criterion: [value]}]) == [f"routes[1].allow[0].{criterion}: {value!r} is not {what}"]


def test_policy_scopes_accept_rfc6749_scope_tokens() -> None:
    p = _policy(allow=[{"scopes": ["billing.write", "https://api.example.com/x:read"]}])
    assert decide(p, Who(scopes=("https://api.example.com/x:read", "billing.write"))).outcome == "allow"


@pytest.mark.parametrize(
    ("glob", "why"),
    [
        ("/api#x", "matches the path only: the query and fragment never count"),
        ("/api\\x", "matches the decoded path: write characters, not %-escapes or backslashes"),
        ("/api//x", "must be a normalized path (no // or dot segments)"),
        ("/api/./x", "must be a normalized path (no // or dot segments)"),
        ("/api/.", "must be a normalized path (no // or dot segments)"),
        ("/api/**X", "** must be a whole segment"),
    ],
)
def test_policy_refused_path_glob_says_why_at_its_index(glob: str, why: str) -> None:
    assert _problems([{"paths": ["/ok/**", glob]}]) == [f"routes[1].allow[0].paths[1]: {why}"]


def test_policy_emails_match_the_folded_trimmed_address_only() -> None:
    p = _policy(allow=[{"emails": [" Ops@Example.com "]}])
    assert decide(p, Who(email="ops@example.COM")) == Decision("allow", "routes[1].allow[0]")
    assert decide(p, Who(email="ann@example.com")) == Decision("deny", "routes[1].allow")
    assert decide(p, Who(email="")) == Decision("deny", "routes[1].allow")


def test_policy_emails_fold_unicode_as_account_keys_do() -> None:
    # NFKC + casefold, as sessions.normalize_email keys accounts: a fullwidth spelling cannot slip past a deny.
    p = _policy(allow=[{"emails": ["strasse@example.com"]}], deny=[{"emails": ["root@example.com"]}])
    assert decide(p, Who(email="STRAßE@example.com")) == Decision("allow", "routes[1].allow[0]")
    assert decide(p, Who(email="ｒｏｏｔ@example.com")) == Decision("deny", "routes[1].deny[0]")


def test_policy_email_domains_trim_dots_fold_case_and_split_at_last_at() -> None:
    p = _policy(allow=[{"email_domains": ["XEROX.COM", "example.org.", ".example.net", "X"]}])
    for email in ("ann@xerox.com", "ann@example.org", "ann@example.net", "ann@x", '"a@evil.test"@example.org'):
        assert decide(p, Who(email=email)) == Decision("allow", "routes[1].allow[0]"), email
    for email in ("ann@erox.com", "ann@sub.example.net", "ann@example.org@evil.test", "ann@example.org."):
        assert decide(p, Who(email=email)) == Decision("deny", "routes[1].allow"), email


@pytest.mark.parametrize("empty", [".", " ", " . ", "\t"])
def test_policy_email_domain_that_compiles_to_nothing_is_a_problem(empty: str) -> None:
    assert _problems([{"email_domains": ["example.com", empty]}]) == [
        'routes[1].allow[0].email_domains: a domain is written without "@", like "example.com"'
    ]


def test_policy_claims_every_bad_claim_is_a_problem() -> None:
    wrong = "must be a string, integer or boolean, or a non-empty list of them"
    assert _problems([{"claims": {"a": {"x": 1}, "b": [], "c": "ok", "d": 1.5}}]) == [
        f"routes[1].allow[0].claims.a: {wrong}",
        f"routes[1].allow[0].claims.b: {wrong}",
        f"routes[1].allow[0].claims.d: {wrong}",
    ]


def test_policy_allow_and_deny_lists_both_reported() -> None:
    not_a_list = 'must be a list of rules, like [{ roles = ["admin"] }]'
    empty = "must list at least one rule (leave it out for none)"
    assert _problems({"roles": ["a"]}, []) == [f"routes[1].allow: {not_a_list}", f"routes[1].deny: {empty}"]
    assert _problems([], "x") == [f"routes[1].allow: {empty}", f"routes[1].deny: {not_a_list}"]


def test_policy_networks_ignore_host_bits_of_a_cidr() -> None:
    p = _policy(allow=[{"networks": ["10.1.2.3/8", "2001:db8::1/32"]}])
    assert decide(p, Who(), ip="10.200.0.1").outcome == "allow"
    assert decide(p, Who(), ip="2001:db8:ffff::2").outcome == "allow"
    assert decide(p, Who(), ip="11.0.0.1").outcome == "deny"


def test_policy_deny_networks_decide_on_the_given_address() -> None:
    p = _policy(deny=[{"networks": ["10.0.0.0/8"]}])
    assert decide(p, Who(), ip="10.1.2.3") == Decision("deny", "routes[1].deny[0]")
    assert decide(p, None, ip="::ffff:10.1.2.3") == Decision("deny", "routes[1].deny[0]")
    assert decide(p, Who(), ip="192.0.2.1") == Decision("allow", "routes[1]")
    assert decide(p, Who(), ip=None) == Decision("allow", "routes[1]")


def test_policy_address_not_read_when_another_criterion_of_the_rule_fails() -> None:
    # The address costs a look at the forwarding chain; `networks` is checked last, whatever order it is written in.
    calls: list[int] = []

    def address() -> Any:
        calls.append(1)
        return ipaddress.ip_address("10.0.0.1")

    net = ["10.0.0.0/8"]
    p = _policy(
        deny=[
            {"networks": net, "paths": ["/admin/**"]},
            {"networks": net, "methods": ["DELETE"]},
            {"networks": net, "roles": ["guest"]},
            {"networks": net, "emails": ["guest@example.com"]},
            {"networks": net, "claims": {"guest": True}},
        ]
    )
    assert p.decide(Who(), "GET", "/public", address) == Decision("allow", "routes[1]")
    assert calls == []
    assert p.decide(Who(), "GET", "/admin/x", address) == Decision("deny", "routes[1].deny[0]")
    assert calls == [1]


def _route_config(tmp_path: Path, **route: Any) -> Any:
    return parse_config(
        {"tokens": {"secret": "s" * 32}, "routes": [{"prefix": "/a", "upstream": "http://127.0.0.1:9"}, {"prefix": "/b", "upstream": "http://127.0.0.1:9", **route}]},
        base=tmp_path, source="t.toml", env={},
    )  # fmt: skip


def test_policy_config_public_route_with_policy_is_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _route_config(tmp_path, auth="public", deny=[{"roles": ["x"]}])
    assert info.value.problems == ["routes[1].deny: a public route cannot carry a policy"]


def test_policy_config_compiled_onto_route_and_printable(tmp_path: Path) -> None:
    from gateway.config import masked

    cfg = _route_config(tmp_path, auth="optional", allow=[{"roles": ["admin"]}])
    assert cfg.routes[0].policy is None
    policy = cfg.routes[1].policy
    assert policy is not None and decide(policy, None) == Decision("login", "routes[1].allow")
    assert masked(cfg.routes[1])["policy"] == {"allow": [{"roles": ["admin"]}], "deny": []}  # type: ignore[index]

