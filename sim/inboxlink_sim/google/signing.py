"""RS256 signing of OpenID Connect ID tokens with ``cryptography`` alone.

The simulator generates a fresh 2048-bit RSA key per :class:`~inboxlink_sim.google.state.SimState`
and publishes it both as a JWK Set (``/oauth2/v3/certs``, what OIDC clients use) and as a
self-signed X.509 certificate map ``{kid: PEM}`` (``/oauth2/v1/certs``, what ``google-auth``'s
``id_token.verify_token`` reads), like Google does.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JOSE uses."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


class SigningKey:
    """An RSA key with a key id, able to sign JWTs and describe itself as JWK and certificate."""

    def __init__(self, key: rsa.RSAPrivateKey | None = None) -> None:
        self._key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = hashlib.sha1(der).hexdigest()  # 40 hex digits, like Google's kids
        self._cert_pem: str | None = None

    def sign_jwt(self, claims: dict[str, Any]) -> str:
        header = {"alg": "RS256", "kid": self.kid, "typ": "JWT"}
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = self._key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64url(signature)

    def verify_jwt(self, token: str) -> dict[str, Any] | None:
        """Claims of a JWT this key signed, or None if it is malformed or the signature is wrong."""
        try:
            head, payload, sig = token.split(".")
            self._key.public_key().verify(
                b64url_decode(sig), f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
            claims = json.loads(b64url_decode(payload))
        except (ValueError, InvalidSignature, binascii.Error):
            return None
        return claims if isinstance(claims, dict) else None

    def jwk(self) -> dict[str, str]:
        numbers = self._key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": b64url(_int_bytes(numbers.n)),
            "e": b64url(_int_bytes(numbers.e)),
        }

    def certificate_pem(self) -> str:
        if self._cert_pem is None:
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "inboxlink-sim.googleusercontent.com")])
            now = dt.datetime.now(dt.UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(self._key.public_key())
                .serial_number(int(self.kid[:16], 16))
                .not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=365))
                .sign(self._key, hashes.SHA256())
            )
            self._cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        return self._cert_pem


def at_hash(access_token: str) -> str:
    """OIDC ``at_hash``: left half of SHA-256 of the access token, base64url."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return b64url(digest[: len(digest) // 2])
