"""Per-route authorization policy: `allow`/`deny` rules compiled once at config load, decided per request.

A rule matches when every criterion it names matches (AND); a list matches when any of its rules does
(OR). Deny is checked first and wins. With `allow` present, a caller no allow rule admits is refused.
`mfa = true` (allow rules only) is a criterion like the others, except that a caller who satisfies
every other criterion of an allow rule but has no "mfa" in `amr` is asked to step up (RFC 9470)
instead of being refused, provided no other allow rule admits them and no deny rule matched.

Paths are matched on the normalized, decoded path the upstream receives (never the query or the
fragment, never a forwarding header), with one trailing `/` ignored. A deny glob matches when it
matches with or without case (both sides folded by gateway.core.casefold, as route prefixes are),
an allow glob only with case, so an upstream that folds case can neither slip past a deny nor be
widened by an allow.

Must not: import aiohttp, read a header, or do I/O; `decide` takes plain values and returns one of
a few preallocated `Decision`s, so a request pays a few dict and set look-ups, not allocations.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

from gateway.core.casefold import fold_case

__all__ = ["CRITERIA", "Caller", "Decision", "Policy", "compile_policy"]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Outcome = Literal["allow", "deny", "login", "mfa"]

CRITERIA = ("roles", "scopes", "emails", "email_domains", "methods", "paths", "networks", "claims", "clients", "mfa")
# Criteria that only an identity can satisfy: an anonymous caller never matches a rule naming one.
_IDENTITY = frozenset({"roles", "scopes", "emails", "email_domains", "claims", "clients", "mfa"})
_ROLE = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 3.3 scope-token


class Caller(Protocol):
    """What a decision reads of a verified access token (gateway.tokens.keyring.Principal has these)."""

    @property
    def email(self) -> str: ...
    @property
    def roles(self) -> tuple[str, ...]: ...
    @property
    def scopes(self) -> tuple[str, ...]: ...
    @property
    def client_id(self) -> str: ...
    @property
    def amr(self) -> tuple[str, ...]: ...
    @property
    def claims(self) -> Mapping[str, Any]: ...


Address = Callable[[], IpAddress | None]
_Check = Callable[[Caller, str, str, Address], bool]


@dataclass(frozen=True, slots=True)
class Decision:
    """`allow`, `deny` (403), `login` (401 missing_token) or `mfa` (401 step-up), and the rule that decided."""

    outcome: Outcome
    rule: str


def _fold(text: str) -> str:
    # The common ASCII case skips NFKC: for ASCII, casefold() is lower() and NFKC changes nothing.
    return text.lower() if text.isascii() else unicodedata.normalize("NFKC", text).casefold()


@dataclass(frozen=True, slots=True)
class _Rule:
    path: str
    checks: tuple[_Check, ...]
    identity: bool
    mfa: bool
    hit: Decision
    step_up: Decision

    def matches(self, caller: Caller | None, method: str, path: str, address: Address) -> bool:
        if caller is None:
            if self.identity:
                return False
            # Only request criteria remain; they never read the caller.
            caller = _ANONYMOUS
        for check in self.checks:
            if not check(caller, method, path, address):
                return False
        return True


class _Anonymous:
    email = ""
    roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    client_id = ""
    amr: tuple[str, ...] = ()
    claims: Mapping[str, Any] = {}


_ANONYMOUS = _Anonymous()


@dataclass(frozen=True)
class Policy:
    """A route's rules as written (`allow`, `deny`: printed by check-config, compared on reload) and,
    outside the dataclass fields, their compiled form."""

    allow: tuple[Mapping[str, Any], ...] = ()
    deny: tuple[Mapping[str, Any], ...] = ()
    # Set once by `compile_policy`; ClassVar keeps them out of fields(), so printing sees only the rules.
    _allow: ClassVar[tuple[_Rule, ...]] = ()
    _deny: ClassVar[tuple[_Rule, ...]] = ()
    _pass: ClassVar[Decision]
    _refused: ClassVar[Decision]
    _login: ClassVar[Decision]
    _needs_identity: ClassVar[bool] = False
    needs_address: ClassVar[bool] = False

    def _compiled(self, *, where: str, allow: tuple[_Rule, ...], deny: tuple[_Rule, ...]) -> Policy:
        for name, value in {
            "_allow": allow,
            "_deny": deny,
            "_pass": Decision("allow", where),
            "_refused": Decision("deny", f"{where}.allow"),
            "_login": Decision("login", f"{where}.allow"),
            "_needs_identity": any(r.identity for r in allow),
            "needs_address": any("networks" in r for r in (*self.allow, *self.deny)),
        }.items():
            object.__setattr__(self, name, value)
        return self

    def decide(self, caller: Caller | None, method: str, path: str, address: Address) -> Decision:
        """The decision for a caller (None: anonymous) sending `method` to the normalized `path`.

        `address` returns the client's address (the real client behind trusted proxies); it is
        called only by rules with `networks`.
        """
        if len(path) > 1 and path[-1] == "/":
            path = path[:-1]
        for rule in self._deny:
            if rule.matches(caller, method, path, address):
                return rule.hit
        if not self._allow:
            return self._pass
        step_up: _Rule | None = None
        for rule in self._allow:
            if rule.matches(caller, method, path, address):
                if not rule.mfa or "mfa" in caller.amr:  # type: ignore[union-attr]
                    return rule.hit
                step_up = step_up or rule
        if step_up is not None:
            return step_up.step_up
        if caller is None and self._needs_identity:
            return self._login
        return self._refused


# -- compiling -------------------------------------------------------------------------------------


def _strings(value: object, key: str, problems: list[str], *, pattern: re.Pattern[str] | None = None, what: str = "") -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{key}: must be a list of strings")
        return []
    if not value:
        problems.append(f"{key}: must not be empty (a rule with an empty list could never match)")
    if pattern is not None:
        for v in value:
            if not pattern.fullmatch(v):
                problems.append(f"{key}: {v!r} is not {what}")
    return list(value)


def _glob(pattern: str) -> str:
    """The regex for one path glob: `*` within one segment, `**` as a whole segment for any number of them."""
    out = ""
    for seg in pattern.strip("/").split("/") if pattern != "/" else [""]:
        if seg == "**":
            out += "(?:/.*)?"
        else:
            out += "/" + "[^/]*".join(re.escape(part) for part in seg.split("*"))
    return out or "/"


def _path_problems(p: str) -> str | None:
    if not p.startswith("/"):
        return "must start with \"/\""
    if "?" in p or "#" in p:
        return "matches the path only: the query and fragment never count"
    if "%" in p or "\\" in p:
        return "matches the decoded path: write characters, not %-escapes or backslashes"
    segments = p.strip("/").split("/")
    if "//" in p or any(s in (".", "..") for s in segments):
        return "must be a normalized path (no // or dot segments)"
    if any("**" in s and s != "**" for s in segments):
        return "** must be a whole segment"
    return None


def _claims(value: object, key: str, problems: list[str]) -> dict[str, frozenset[tuple[type, object]]]:
    if not isinstance(value, dict) or not value:
        problems.append(f"{key}: must be a table {{ name = value | [values] }} with at least one claim")
        return {}
    out: dict[str, frozenset[tuple[type, object]]] = {}
    for name, wanted in value.items():
        items = wanted if isinstance(wanted, list) else [wanted]
        if not items or not all(isinstance(v, str | int | bool) for v in items):
            problems.append(f"{key}.{name}: must be a string, integer or boolean, or a non-empty list of them")
            continue
        # (type, value) pairs: true must not match 1, nor "1" match 1.
        out[name] = frozenset((type(v), v) for v in items)
    return out


def _claim_check(wanted: dict[str, frozenset[tuple[type, object]]]) -> _Check:
    def check(c: Caller, m: str, p: str, a: Address) -> bool:
        for name, values in wanted.items():
            got = c.claims.get(name, _MISSING)
            items = got if isinstance(got, list) else (got,)
            if not any((type(v), v) in values for v in items if isinstance(v, str | int | bool)):
                return False
        return True

    return check


_MISSING = object()


def _compile_rule(raw: object, path: str, *, deny: bool, problems: list[str]) -> _Rule | None:
    if not isinstance(raw, dict):
        problems.append(f"{path}: must be a table of criteria, like {{ roles = [\"admin\"] }}")
        return None
    if not raw:
        problems.append(f"{path}: an empty rule is not allowed (name at least one criterion)")
        return None
    before = len(problems)
    checks: list[tuple[int, _Check]] = []  # (cost rank, check): cheap checks run first
    mfa = False
    for name, value in raw.items():
        key = f"{path}.{name}"
        if name not in CRITERIA:
            problems.append(f"{key}: unknown criterion (known: {', '.join(CRITERIA)})")
        elif name == "roles":
            roles = frozenset(_strings(value, key, problems, pattern=_ROLE, what="a role name"))
            checks.append((1, lambda c, m, p, a, s=roles: not s.isdisjoint(c.roles)))
        elif name == "scopes":
            scopes = frozenset(_strings(value, key, problems, pattern=_SCOPE, what="a scope"))
            checks.append((1, lambda c, m, p, a, s=scopes: s.issubset(c.scopes)))
        elif name == "emails":
            emails = frozenset(_fold(e.strip()) for e in _strings(value, key, problems))
            checks.append((2, lambda c, m, p, a, s=emails: bool(c.email) and _fold(c.email) in s))
        elif name == "email_domains":
            domains = _strings(value, key, problems)
            # Judged as compiled (trimmed, dots stripped): " " or "." would compile to the empty domain.
            if any("@" in d or not d.strip().strip(".") for d in domains):
                problems.append(f"{key}: a domain is written without \"@\", like \"example.com\"")
            folded = frozenset(_fold(d.strip().strip(".")) for d in domains)
            checks.append((2, lambda c, m, p, a, s=folded: _fold(c.email.rpartition("@")[2]) in s if c.email else False))
        elif name == "methods":
            methods = frozenset(_strings(value, key, problems, pattern=_METHOD, what="an upper-case HTTP method"))
            checks.append((0, lambda c, m, p, a, s=methods: m in s))
        elif name == "paths":
            globs = _strings(value, key, problems)
            for i, g in enumerate(globs):
                if (wrong := _path_problems(g)) is not None:
                    problems.append(f"{key}[{i}]: {wrong}")
            if len(problems) == before and deny:
                # Both sides folded: fold_case keeps every "/" and "*", and a path that matches with
                # case also matches folded, so this is "with or without case".
                regex = re.compile("|".join(f"(?:{_glob(fold_case(g))})" for g in globs))
                checks.append((3, lambda c, m, p, a, rx=regex: rx.fullmatch(fold_case(p)) is not None))
            elif len(problems) == before:
                regex = re.compile("|".join(f"(?:{_glob(g)})" for g in globs))  # with case only
                checks.append((3, lambda c, m, p, a, rx=regex: rx.fullmatch(p) is not None))
        elif name == "networks":
            nets = []
            for cidr in _strings(value, key, problems):
                try:
                    nets.append(ipaddress.ip_network(cidr, strict=False))
                except ValueError:
                    problems.append(f"{key}: {cidr!r} is not a CIDR network")
            networks = tuple(nets)
            checks.append((4, lambda c, m, p, a, n=networks: _in_networks(a(), n)))
        elif name == "claims":
            checks.append((2, _claim_check(_claims(value, key, problems))))
        elif name == "clients":
            clients = frozenset(_strings(value, key, problems))
            checks.append((1, lambda c, m, p, a, s=clients: c.client_id in s))
        elif name == "mfa":
            if value is not True:
                problems.append(f"{key}: must be true (leave it out to not require a second factor)")
            elif deny:
                problems.append(f"{key}: only allow rules can require a second factor")
            mfa = True
    if len(problems) != before:
        return None
    return _Rule(
        path=path,
        checks=tuple(check for _, check in sorted(checks, key=lambda rc: rc[0])),
        identity=any(name in _IDENTITY for name in raw),
        mfa=mfa,
        hit=Decision("deny" if deny else "allow", path),
        step_up=Decision("mfa", path),
    )


def _in_networks(address: IpAddress | None, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


def compile_policy(allow: object, deny: object, *, where: str, problems: list[str]) -> Policy | None:
    """The compiled policy of the route at `where` (`routes[1]`); problems are appended with their key paths.

    None when neither list is given or a problem was found.
    """
    if allow is None and deny is None:
        return None
    before = len(problems)
    compiled: dict[str, tuple[_Rule, ...]] = {}
    raw: dict[str, tuple[Mapping[str, Any], ...]] = {}
    for name, rules in (("allow", allow), ("deny", deny)):
        if rules is None:
            compiled[name], raw[name] = (), ()
            continue
        if not isinstance(rules, list):
            problems.append(f"{where}.{name}: must be a list of rules, like [{{ roles = [\"admin\"] }}]")
            continue
        if not rules:
            problems.append(f"{where}.{name}: must list at least one rule (leave it out for none)")
            continue
        out = [_compile_rule(r, f"{where}.{name}[{i}]", deny=name == "deny", problems=problems) for i, r in enumerate(rules)]
        compiled[name] = tuple(r for r in out if r is not None)
        raw[name] = tuple(dict(r) for r in rules if isinstance(r, dict))
    if len(problems) != before:
        return None
    return Policy(allow=raw["allow"], deny=raw["deny"])._compiled(where=where, allow=compiled["allow"], deny=compiled["deny"])

