import pytest

from ranvier.errors import (
    BadJsonError,
    LimitExceededError,
    MatrixError,
    PartialStateConflictError,
)


def test_matrix_error_body_and_status():
    err = BadJsonError("missing field 'type'")
    assert err.http_status == 400
    assert err.to_json() == {"errcode": "M_BAD_JSON", "error": "missing field 'type'"}


def test_overrides_and_extra_fields():
    err = MatrixError("nope", errcode="M_FORBIDDEN", http_status=403, admin_contact="x")
    assert (err.errcode, err.http_status) == ("M_FORBIDDEN", 403)
    assert err.to_json()["admin_contact"] == "x"
    # The class defaults stay untouched.
    assert MatrixError.errcode == "M_UNKNOWN"


def test_limit_exceeded_carries_retry_after():
    err = LimitExceededError(retry_after_ms=1500)
    assert err.http_status == 429
    assert err.to_json() == {
        "errcode": "M_LIMIT_EXCEEDED",
        "error": "Too many requests",
        "retry_after_ms": 1500,
    }


def test_partial_state_conflict_is_not_a_matrix_error():
    """It must never be answered to a client as itself."""
    with pytest.raises(PartialStateConflictError):
        raise PartialStateConflictError()
    assert not issubclass(PartialStateConflictError, MatrixError)
