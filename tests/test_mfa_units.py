"""The pure second-factor modules on their own: key derivation and sealing, TOTP windows, recovery codes, config."""

from __future__ import annotations

import json
from pathlib import Path

import pyotp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.config import MfaConfig, TokenConfig, masked, parse_config
from gateway.core.errors import ConfigError
from gateway.mfa import recovery, totp
from gateway.mfa.secretbox import SecretBox, UnreadableSecret

SECRET = "s" * 40
T = 1_700_000_000.0


def _pem(path: Path) -> Path:
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def test_secretbox_round_trip_and_nonce_differs_each_time() -> None:
    box = SecretBox.from_config(MfaConfig(), TokenConfig(secret=SECRET))
    a, b = box.seal("JBSWY3DPEHPK3PXP", user_id="u1"), box.seal("JBSWY3DPEHPK3PXP", user_id="u1")
    assert a != b and "JBSWY3DPEHPK3PXP" not in a
    assert box.open(a, user_id="u1") == "JBSWY3DPEHPK3PXP"


def test_secretbox_key_sources_are_distinct_and_stable(tmp_path: Path) -> None:
    derived = SecretBox.from_config(MfaConfig(), TokenConfig(secret=SECRET))
    explicit = SecretBox.from_config(MfaConfig(encryption_key=SECRET), TokenConfig(secret=SECRET))
    sealed = derived.seal("x", user_id="u")
    assert SecretBox.from_config(MfaConfig(), TokenConfig(secret=SECRET)).open(sealed, user_id="u") == "x"
    with pytest.raises(UnreadableSecret):
        explicit.open(sealed, user_id="u")  # the same bytes as tokens.secret still give another key
    pem = _pem(tmp_path / "k.pem")
    asym = TokenConfig(algorithm="EdDSA", private_key_file=pem)
    sealed = SecretBox.from_config(MfaConfig(), asym).open(
        SecretBox.from_config(MfaConfig(), asym).seal("y", user_id="u"), user_id="u"
    )
    assert sealed == "y"
    assert digests_differ(derived, explicit)


def digests_differ(a: SecretBox, b: SecretBox) -> bool:
    return a.digest("abcde12345") != b.digest("abcde12345") and a.digest("abcde12345") == a.digest("abcde12345")


def test_secretbox_tampered_or_foreign_value_is_unreadable() -> None:
    box = SecretBox.from_config(MfaConfig(), TokenConfig(secret=SECRET))
    sealed = box.seal("secret", user_id="u")
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    for bad in (flipped, "v0." + sealed[3:], "v1.!!!", ""):
        with pytest.raises(UnreadableSecret):
            box.open(bad, user_id="u")
    assert "SecretBox(...)" == repr(box)


def test_totp_matching_step_window_is_one_step_each_way() -> None:
    secret = totp.new_secret()
    now_step = int(T // 30)
    for offset in (-1, 0, 1):
        assert totp.matching_step(secret, pyotp.TOTP(secret).at(T + 30 * offset), now=T) == now_step + offset
    for offset in (-2, 2):
        code = pyotp.TOTP(secret).at(T + 30 * offset)
        if code not in {pyotp.TOTP(secret).at(T + 30 * o) for o in (-1, 0, 1)}:
            assert totp.matching_step(secret, code, now=T) is None


def test_totp_normalize_code() -> None:
    assert totp.normalize_code("123 456") == "123456"
    for bad in ("12345", "1234567", "12345a", 123456, None, "１２３４５６"):
        assert totp.normalize_code(bad) is None


def test_recovery_codes_are_ten_distinct_and_normalize() -> None:
    codes = recovery.new_codes()
    assert len(set(codes)) == 10 and all(len(c) == 11 and c[5] == "-" for c in codes)
    assert recovery.normalize(" " + codes[0].upper() + " ") == codes[0].replace("-", "")
    for bad in ("short", "0" * 10, None, 5, "x" * 100):
        assert recovery.normalize(bad) is None


def _cfg(tmp_path: Path, **tables: object) -> object:
    data = {"tokens": {"secret": SECRET}, **tables}
    return parse_config(data, base=tmp_path, source="t.toml", env={})


def test_config_mfa_and_webauthn_tables(tmp_path: Path) -> None:
    webauthn = {"rp_id": "example.com", "rp_name": "Acme", "origins": ["https://app.example.com"]}
    cfg = _cfg(tmp_path, mfa={"encryption_key": "k" * 32, "totp_issuer": "Acme"}, webauthn=webauthn)
    assert cfg.mfa.totp_issuer == "Acme" and cfg.webauthn.rp_id == "example.com"  # type: ignore[attr-defined]
    view = json.dumps(masked(cfg))
    assert "k" * 32 not in view and '"encryption_key": "***"' in view


@pytest.mark.parametrize(
    ("tables", "problem"),
    [
        ({"mfa": {"encryption_key": "short"}}, "mfa.encryption_key: must be at least 32 bytes"),
        ({"mfa": {"totp_issuer": "a:b"}}, "mfa.totp_issuer:"),
        ({"mfa": {"nope": 1}}, "mfa.nope: unknown key"),
        ({"webauthn": {"rp_id": "https://example.com"}}, "webauthn.rp_id: must be a domain name"),
        ({"webauthn": {"origins": ["example.com"]}}, "webauthn.origins: must be an origin"),
        ({"webauthn": {"rp_name": ""}}, "webauthn.rp_name: must not be empty"),
    ],
)
def test_config_second_factor_errors_name_the_key(tmp_path: Path, tables: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, **tables)
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems
