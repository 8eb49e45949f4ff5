"""Access control for both transports: bearer tokens, and TLS for gRPC, read from the settings.

Off by default: with no tokens configured every endpoint is open, as before. With tokens, a call
needs `authorization: Bearer <token>` except liveness (/healthz), the API description
(/openapi.json, /docs, gRPC reflection: the contract, not data; Swagger UI cannot send a token to
fetch it) and, unless `auth_protect_ops`, the operator endpoints (/readyz, /metrics, gRPC health).

Tokens are kept only as SHA-256 digests and compared with `hmac.compare_digest` against every one
of them, so neither the time taken nor a token's length says how close a guess was; they are never
logged or echoed. Everything here is checked once at start-up, before any port is bound, so a
setting that cannot work is one clear line instead of a half-started service.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from reaseq.service.errors import AccessConfigError, Unauthenticated
from reaseq.service.settings import ServiceSettings

# RFC 6750 token68 (what `secrets.token_urlsafe`, `openssl rand -hex|-base64` produce)
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 4096
TOKEN_HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def _checked_tokens(raw: list[str], source: str) -> list[str]:
    """Tokens of one source, each validated; a message names the token by position only."""
    tokens = [t.strip() for t in raw]
    tokens = [t for t in tokens if t and not t.startswith("#")]
    if not tokens:
        raise AccessConfigError(
            f"{source} is set but holds no token: authentication would accept nothing; "
            f"remove the setting or add a token ({TOKEN_HINT})"
        )
    for n, token in enumerate(tokens, 1):
        where = f"{source}: token {n} of {len(tokens)}"
        if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
            raise AccessConfigError(
                f"{where} is {len(token)} characters; use {MIN_TOKEN_CHARS} to "
                f"{MAX_TOKEN_CHARS} ({TOKEN_HINT})"
            )
        if not TOKEN_PATTERN.match(token):
            raise AccessConfigError(
                f"{where} has characters a bearer token cannot carry; use letters, digits and "
                f"-._~+/ (trailing = allowed) ({TOKEN_HINT})"
            )
    return tokens


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise AccessConfigError(f"{setting} {path}: cannot read it ({err.strerror})") from None


@dataclass(frozen=True)
class TokenCheck:
    """The accepted tokens (as digests) and whether the operator endpoints need one too."""

    digests: tuple[bytes, ...] = ()
    protect_ops: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> TokenCheck:
        tokens: list[str] = []
        if settings.auth_tokens is not None and settings.auth_tokens.get_secret_value().strip():
            raw = settings.auth_tokens.get_secret_value().split(",")
            tokens += _checked_tokens(raw, "auth_tokens (REASEQ_AUTH_TOKENS)")
        if settings.auth_tokens_file is not None:
            data = _read(settings.auth_tokens_file, "auth_tokens_file")
            try:
                lines = data.decode("ascii").splitlines()
            except UnicodeDecodeError:
                raise AccessConfigError(
                    f"auth_tokens_file {settings.auth_tokens_file} is not ASCII text: write one "
                    "token a line"
                ) from None
            tokens += _checked_tokens(lines, f"auth_tokens_file {settings.auth_tokens_file}")
        if settings.auth_protect_ops and not tokens:
            raise AccessConfigError(
                "auth_protect_ops is set but no token is configured: set auth_tokens or "
                "auth_tokens_file, or drop auth_protect_ops"
            )
        digests = tuple(dict.fromkeys(_digest(t.encode()) for t in tokens))
        return cls(digests, settings.auth_protect_ops)

    def verify(self, authorization: str | None, how: str) -> None:
        """Raise `Unauthenticated` unless `authorization` is `Bearer <an accepted token>`.

        `how` tells the caller where the token goes (a header, or gRPC metadata). Any value
        (control characters, non-ASCII, a bare scheme) is answered, never an internal error.
        """
        if authorization is None or not authorization.strip():
            raise Unauthenticated(f"this service needs a token: send {how}", presented=False)
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials:
            raise Unauthenticated(
                f"the authorization value is not a bearer token: send {how}", presented=True
            )
        given = _digest(credentials.encode("utf-8", "surrogateescape"))
        matched = False
        for digest in self.digests:  # every one, no early exit
            matched |= hmac.compare_digest(given, digest)
        if not matched:
            raise Unauthenticated(
                f"the bearer token is not valid: send {how} with a configured token",
                presented=True,
            )


@dataclass(frozen=True)
class GrpcTls:
    """PEM bytes for the gRPC server's credentials, checked to belong together."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None  # set: mutual TLS, every client presents a cert it signed

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> GrpcTls | None:
        cert, key, ca = settings.grpc_tls_cert, settings.grpc_tls_key, settings.grpc_tls_client_ca
        if cert is None and key is None:
            if ca is not None:
                raise AccessConfigError(
                    "grpc_tls_client_ca is set without grpc_tls_cert and grpc_tls_key: mutual "
                    "TLS needs the server's own certificate and key too"
                )
            return None
        if cert is None or key is None:
            missing = "grpc_tls_key" if key is None else "grpc_tls_cert"
            raise AccessConfigError(
                f"{missing} is not set: gRPC TLS needs both grpc_tls_cert and grpc_tls_key"
            )
        tls = cls(
            _read(cert, "grpc_tls_cert"),
            _read(key, "grpc_tls_key"),
            _read(ca, "grpc_tls_client_ca") if ca is not None else None,
        )
        _check_pem(tls, cert, key, ca)
        return tls

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


def _check_pem(tls: GrpcTls, cert: Path, key: Path, ca: Path | None) -> None:
    """Parse the files with the standard library's OpenSSL first: grpcio only logs a C-core line
    and says "failed to bind" when they are wrong."""
    if b"-----BEGIN CERTIFICATE-----" not in tls.cert_chain:
        raise AccessConfigError(f"grpc_tls_cert {cert} holds no PEM certificate")
    if not re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----", tls.private_key):
        raise AccessConfigError(f"grpc_tls_key {key} holds no PEM private key")

    def encrypted() -> bytes:
        raise AccessConfigError(
            f"grpc_tls_key {key} is encrypted; gRPC needs it unencrypted "
            f"(openssl pkey -in {key} -out KEY.pem) and protected by file permissions"
        )

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=encrypted)
    except ssl.SSLError as err:
        if err.reason == "KEY_VALUES_MISMATCH":
            raise AccessConfigError(
                f"grpc_tls_key {key} does not belong to the certificate in grpc_tls_cert {cert}"
            ) from None
        raise AccessConfigError(
            f"grpc_tls_cert {cert} / grpc_tls_key {key} cannot be loaded: {err.reason or err}"
        ) from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as err:
            raise AccessConfigError(
                f"grpc_tls_client_ca {ca} holds no PEM CA certificate ({err.reason or err})"
            ) from None


@dataclass(frozen=True)
class Access:
    """Everything the transports need to enforce access, built once from the settings."""

    tokens: TokenCheck
    grpc_tls: GrpcTls | None

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> Access:
        """Raises `AccessConfigError` with the setting and the fix when a setting cannot work."""
        return cls(TokenCheck.from_settings(settings), GrpcTls.from_settings(settings))

    def describe(self) -> str:
        """For the start-up log: what is enforced, never a token."""
        if self.tokens.enabled:
            ops = "too" if self.tokens.protect_ops else "open"
            auth = f"bearer tokens required ({len(self.tokens.digests)} accepted; ops {ops})"
        else:
            auth = "no authentication"
        if self.grpc_tls is None:
            tls = "gRPC plaintext"
        else:
            tls = "gRPC TLS" + (" (mutual)" if self.grpc_tls.client_ca is not None else "")
        return f"{auth}, {tls}"
