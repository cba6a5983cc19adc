"""Braintrust audit headers: ``x-bt-audit-resources`` decoding, with a size cap.

The header is a JSON envelope ``{"v": 1, "p": "<base64>"}``; the payload is gzip-compressed
JSON, a list of ``{"type", "id", "name"}``. Other versions, bad base64, bad gzip, output
larger than the cap (a gzip bomb) and other shapes are rejected with ``AuditHeaderError``.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from dataclasses import dataclass

MAX_HEADER_BYTES = 64 * 1024
MAX_DECOMPRESSED_BYTES = 1024 * 1024


class AuditHeaderError(ValueError):
    pass


@dataclass(frozen=True)
class AuditResource:
    type: str
    id: str
    name: str | None


def decode_resources(
    header: str, *, max_bytes: int = MAX_DECOMPRESSED_BYTES
) -> list[AuditResource]:
    if len(header) > MAX_HEADER_BYTES:
        raise AuditHeaderError("audit header too large")
    try:
        envelope = json.loads(header)
    except (ValueError, RecursionError) as exc:
        raise AuditHeaderError("audit header is not JSON") from exc
    version = envelope.get("v") if isinstance(envelope, dict) else None
    if type(version) is not int or version != 1:  # not True, not 1.0
        raise AuditHeaderError("unsupported audit header version")
    payload = envelope.get("p")
    if not isinstance(payload, str):
        raise AuditHeaderError("audit header has no payload")
    try:
        compressed = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AuditHeaderError("audit payload is not base64") from exc
    decompressor = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)  # gzip framing
    try:
        raw = decompressor.decompress(compressed, max_bytes + 1)
    except zlib.error as exc:
        raise AuditHeaderError("audit payload is not gzip") from exc
    if len(raw) > max_bytes or decompressor.unconsumed_tail:
        raise AuditHeaderError(f"audit payload exceeds {max_bytes} bytes uncompressed")
    if not decompressor.eof:
        raise AuditHeaderError("audit payload is truncated gzip")
    try:
        items = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise AuditHeaderError("audit payload is not JSON") from exc
    if not isinstance(items, list):
        raise AuditHeaderError("audit payload is not a list")
    resources = []
    for item in items:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("type"), str)
            or not isinstance(item.get("id"), str)
            or not isinstance(item.get("name"), str | None)
        ):
            raise AuditHeaderError("audit payload item is not {type, id, name}")
        resources.append(AuditResource(type=item["type"], id=item["id"], name=item.get("name")))
    return resources
