"""Domain errors that carry their HTTP and gRPC status, mapped in one place by each transport.

Every error says what was wrong and how to fix it, so a caller can act on the message alone.
"""

from __future__ import annotations

import grpc


class ReaseqError(Exception):
    """Base class: a failure the caller can be told about (never an internal crash)."""

    http_status: int = 500
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    kind: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ReaseqError):
    """The request itself is malformed: empty or oversized lists, bad ids."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    kind = "invalid_request"


class NotReady(ReaseqError):
    """No release is loaded yet (start-up, or nothing published)."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    kind = "not_ready"


class FeatureStoreUnavailable(ReaseqError):
    """The feature store (Redis) did not answer in time; retry, or check the store."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    kind = "feature_store_unavailable"


class ModelBackendUnavailable(ReaseqError):
    """The model backend (ONNX Runtime / Triton) failed or did not answer in time."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    kind = "model_backend_unavailable"


class InvalidModelOutput(ReaseqError):
    """The model produced a non-finite score (NaN/Inf): never returned to a caller as a score."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    kind = "invalid_model_output"


class CorruptFeatures(ReaseqError):
    """A stored feature value does not decode or holds NaN/Inf (changed after it was verified)."""

    http_status = 500
    grpc_code = grpc.StatusCode.DATA_LOSS
    kind = "corrupt_features"


class ExplainUnavailable(ReaseqError):
    """`explain` was asked of a release whose model has no attention output (exported before
    explanations); scores alone still work."""

    http_status = 400
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    kind = "explain_unavailable"


class DeadlineExceeded(ReaseqError):
    """The request's own deadline passed before scoring finished."""

    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    kind = "deadline_exceeded"


class RequestTooLarge(ReaseqError):
    """The HTTP body is over `http_max_body_bytes`; refused before it is read, let alone parsed."""

    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    kind = "request_too_large"


class Unauthenticated(ReaseqError):
    """Tokens are configured and the call carries none, or one that is not valid; the message
    says how to send one and never repeats what was sent."""

    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    kind = "unauthenticated"

    def __init__(self, message: str, presented: bool) -> None:
        super().__init__(message)
        self.presented = presented  # a credential was sent (RFC 6750: error="invalid_token")


class DeviceUnavailable(RuntimeError):
    """The configured model device cannot run here: a start-up error, not a release's fault."""


class AccessConfigError(ValueError):
    """Token or TLS settings that cannot work (a file that cannot be read, a key that does not
    belong to its certificate): a start-up error whose message names the setting and the fix."""


class CannotBind(OSError):
    """A transport could not bind its address at start-up; the message is the whole story."""


class PortInUse(CannotBind):
    """Another process (often a second `reaseq serve`) already listens on the port."""
