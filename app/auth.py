"""The one API-key check, for every keyed route and protocol. No HTTP framework here: raw header pairs in."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from pydantic import SecretStr

from app.errors import Forbidden, Unauthorized

HeaderPairs = Iterable[tuple[bytes, bytes]]  # as ASGI gives them: lower-case names, in arrival order


def check_api_key(headers: HeaderPairs, api_key: SecretStr | None) -> None:
    """With a key configured, demand exactly one ``Authorization: Bearer <key>``, compared in constant time.

    Two Authorization headers are refused even if one holds the key: a proxy or client that joins or repeats
    headers must not get a guess for free, and no reading of them could be the single right one.
    """
    if api_key is None:
        return
    _check_bearer(headers, api_key, "API key")


def check_admin_key(headers: HeaderPairs, admin_key: SecretStr | None) -> None:
    """Model changes need ``Authorization: Bearer <admin key>``; with no admin key configured they are off."""
    if admin_key is None:
        raise Forbidden("model changes are off: set FASHION_ADMIN_KEY on the server to allow them")
    _check_bearer(headers, admin_key, "admin key")


def _check_bearer(headers: HeaderPairs, key: SecretStr, what: str) -> None:
    values = [value for name, value in headers if name == b"authorization"]
    scheme, _, token = values[0].partition(b" ") if len(values) == 1 else (b"", b"", b"")
    if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), key.get_secret_value().encode()):
        detail = "send one Authorization header" if len(values) > 1 else "send 'Authorization: Bearer <key>'"
        raise Unauthorized(f"missing or wrong {what}: {detail}")
