"""``x-bt-audit-resources`` decoding (DESIGN §6): versioned envelope, base64, gzip, size cap."""

from __future__ import annotations

import base64
import gzip
import json
import time
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retention.audit import (
    MAX_DECOMPRESSED_BYTES,
    MAX_HEADER_BYTES,
    AuditHeaderError,
    AuditResource,
    decode_resources,
)
from tests.fakecp import audit_header

PROJECT = "5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11"
EXPERIMENT = "0b7e0000-0000-4000-8000-000000000001"


def _envelope(payload: bytes, *, version: object = 1, compress: bool = True) -> str:
    data = gzip.compress(payload) if compress else payload
    return json.dumps({"v": version, "p": base64.b64encode(data).decode()})


def test_a_valid_header_decodes_to_exact_resources() -> None:
    header = audit_header(
        [
            {"type": "project", "id": PROJECT, "name": "checkout"},
            {"type": "experiment", "id": EXPERIMENT, "name": None},
            {"type": "org", "id": "o-1"},  # name is optional
        ]
    )
    assert decode_resources(header) == [
        AuditResource(type="project", id=PROJECT, name="checkout"),
        AuditResource(type="experiment", id=EXPERIMENT, name=None),
        AuditResource(type="org", id="o-1", name=None),
    ]


def test_an_empty_list_decodes_to_no_resources() -> None:
    assert decode_resources(audit_header([])) == []


@pytest.mark.parametrize("version", [2, 0, "1", None, 1.5])
def test_other_versions_are_rejected(version: object) -> None:
    header = _envelope(json.dumps([{"type": "project", "id": PROJECT}]).encode(), version=version)
    with pytest.raises(AuditHeaderError, match="version"):
        decode_resources(header)


def test_version_2_from_the_fixture_builder_is_rejected() -> None:
    with pytest.raises(AuditHeaderError, match="unsupported audit header version"):
        decode_resources(audit_header([{"type": "project", "id": PROJECT}], version=2))


def test_an_envelope_without_a_version_is_rejected() -> None:
    payload = base64.b64encode(gzip.compress(b"[]")).decode()
    with pytest.raises(AuditHeaderError, match="version"):
        decode_resources(json.dumps({"p": payload}))


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("not json at all", "not JSON"),
        ("", "not JSON"),
        ('{"v": 1, "p": ', "not JSON"),
        ("[1, 2]", "version"),  # JSON, but not an envelope
        ('"a string"', "version"),
        ("null", "version"),
        ('{"v": 1}', "no payload"),
        ('{"v": 1, "p": null}', "no payload"),
        ('{"v": 1, "p": 42}', "no payload"),
        ('{"v": 1, "p": ["H4sI"]}', "no payload"),
        ('{"v": 1, "p": "not base64!!"}', "not base64"),
        ('{"v": 1, "p": "abc"}', "not base64"),  # bad padding
        ('{"v": 1, "p": "é"}', "not base64"),  # not ASCII
    ],
)
def test_malformed_envelopes_are_rejected(header: str, message: str) -> None:
    with pytest.raises(AuditHeaderError, match=message):
        decode_resources(header)


def test_a_payload_that_is_not_gzip_is_rejected() -> None:
    header = _envelope(b'[{"type": "project", "id": "x"}]', compress=False)
    with pytest.raises(AuditHeaderError, match="not gzip"):
        decode_resources(header)


def test_a_zlib_stream_without_gzip_framing_is_rejected() -> None:
    data = zlib.compress(b'[{"type": "project", "id": "x"}]')
    header = json.dumps({"v": 1, "p": base64.b64encode(data).decode()})
    with pytest.raises(AuditHeaderError, match="not gzip"):
        decode_resources(header)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"", "not JSON"),
        (b'{"type": "project", "id": "x"}', "not a list"),
        (b'"project"', "not a list"),
        (b"null", "not a list"),
        (b"[1]", "not {type, id, name}"),
        (b'[["project", "x"]]', "not {type, id, name}"),
        (b'[{"id": "x"}]', "not {type, id, name}"),
        (b'[{"type": "project"}]', "not {type, id, name}"),
        (b'[{"type": null, "id": "x"}]', "not {type, id, name}"),
        (b'[{"type": "project", "id": 7}]', "not {type, id, name}"),
        (b'[{"type": "project", "id": "x", "name": 3}]', "not {type, id, name}"),
        (b'[{"type": "project", "id": "x"}, {}]', "not {type, id, name}"),
    ],
)
def test_payloads_of_the_wrong_shape_are_rejected(payload: bytes, message: str) -> None:
    with pytest.raises(AuditHeaderError, match=message):
        decode_resources(_envelope(payload))


def test_a_gzip_bomb_is_rejected_quickly_without_inflating_it() -> None:
    # 40 MiB of zeros compress to ~40 KB: the header stays under MAX_HEADER_BYTES, so the
    # decompressed-size cap (1 MiB) is what must stop it.
    bomb = gzip.compress(b"\0" * (40 << 20), 9)
    header = json.dumps({"v": 1, "p": base64.b64encode(bomb).decode()})
    assert len(header) <= MAX_HEADER_BYTES
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(AuditHeaderError) as caught:
            decode_resources(header)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(caught.value) == (
        f"audit payload exceeds {MAX_DECOMPRESSED_BYTES} bytes uncompressed"
    )
    assert elapsed < 2.0
    # the cap bounds what is inflated: far below the 40 MiB the bomb expands to
    assert peak < 8 * MAX_DECOMPRESSED_BYTES


def test_the_size_cap_is_exact_and_configurable() -> None:
    items = json.dumps([{"type": "project", "id": "x" * 100}]).encode()
    header = _envelope(items)
    assert decode_resources(header, max_bytes=len(items)) == [
        AuditResource(type="project", id="x" * 100, name=None)
    ]
    with pytest.raises(AuditHeaderError, match=f"exceeds {len(items) - 1} bytes"):
        decode_resources(header, max_bytes=len(items) - 1)


def test_a_header_longer_than_the_cap_is_rejected_before_parsing() -> None:
    header = " " * (MAX_HEADER_BYTES + 1)  # whitespace: valid JSON padding if it were parsed
    with pytest.raises(AuditHeaderError, match="audit header too large"):
        decode_resources(header)
    padded = audit_header([]) + " " * (MAX_HEADER_BYTES + 1 - len(audit_header([])))
    assert len(padded) == MAX_HEADER_BYTES + 1
    with pytest.raises(AuditHeaderError, match="audit header too large"):
        decode_resources(padded)
    at_cap = audit_header([]) + " " * (MAX_HEADER_BYTES - len(audit_header([])))
    assert decode_resources(at_cap) == []


def test_deeply_nested_json_is_rejected_not_a_crash() -> None:
    """Nesting within the size caps must be an AuditHeaderError, not a RecursionError."""
    with pytest.raises(AuditHeaderError):
        decode_resources("[" * (MAX_HEADER_BYTES - 1))
    with pytest.raises(AuditHeaderError):
        decode_resources(_envelope(b"[" * 200_000))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_random_text_raises_only_audit_header_errors(header: str) -> None:
    try:
        result = decode_resources(header)
    except AuditHeaderError:
        return
    assert all(isinstance(r, AuditResource) for r in result)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(gzip.compress),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.sampled_from(["type", "id", "name", "x"]), inner, max_size=4)
            ),
            max_leaves=12,
        ).map(lambda value: gzip.compress(json.dumps(value).encode())),
    )
)
def test_random_payloads_in_a_valid_envelope_raise_only_audit_header_errors(
    payload: bytes,
) -> None:
    header = json.dumps({"v": 1, "p": base64.b64encode(payload).decode()})
    try:
        result = decode_resources(header)
    except AuditHeaderError:
        return
    for resource in result:
        assert isinstance(resource.type, str) and isinstance(resource.id, str)
        assert resource.name is None or isinstance(resource.name, str)
