"""The key model of the main buckets (shared.keys): what each key holds, and which documents are valid."""
import json

import pytest

from shared import keys
from shared.checksums import checksum_bytes
from shared.exceptions import InvalidParameter, Unprocessable
from shared.identifiers import Keys

SUMS = checksum_bytes(b"some bytes")
UUIDS = [f"2b1e6e0a-0c55-4b5e-8f0f-1a2b3c4d{i:04x}" for i in range(2)]
VERSION = "2026-11-25T010203.000004Z"


@pytest.mark.parametrize("key,kind,uuid,version", [
    (SUMS.blob_key(), "blob", None, None),
    (Keys.file(UUIDS[0], VERSION), "file", UUIDS[0], VERSION),
    (Keys.bundle(UUIDS[0], VERSION), "bundle", UUIDS[0], VERSION),
    (Keys.bundle_tombstone(UUIDS[0], VERSION), "tombstone", UUIDS[0], VERSION),
    (Keys.bundle_tombstone(UUIDS[0]), "tombstone", UUIDS[0], None),
    (Keys.collection(UUIDS[0], VERSION), "collection", UUIDS[0], VERSION),
    (Keys.collection_tombstone(UUIDS[0]), "tombstone", UUIDS[0], None),
])
def test_keys_of_the_layout(key, kind, uuid, version):
    target = keys.parse_key(key)
    assert (target.key, target.kind, target.uuid, target.version) == (key, kind, uuid, version)
    assert (target.checksums == SUMS) is (kind == "blob")


@pytest.mark.parametrize("key", [
    "blobs/abc", SUMS.blob_key().upper().replace("BLOBS/", "blobs/"), SUMS.blob_key() + ".x",
    f"files/{UUIDS[0]}", f"files/{UUIDS[0]}.yesterday", f"files/{UUIDS[0].upper()}.{VERSION}",
    f"bundles/{UUIDS[0]}.{VERSION}.x", f"collections/{UUIDS[0]}.{VERSION}.dead", "files/",
])
def test_malformed_keys_under_the_layout_are_illegal(key):
    with pytest.raises(InvalidParameter) as error:
        keys.parse_key(key)
    assert error.value.error_code == "illegal_key"


@pytest.mark.parametrize("key", ["tmp/compose/abc/00001", "README", "blobsx/abc", ""])
def test_keys_outside_the_layout_are_none(key):
    assert keys.parse_key(key) is None


def test_load_document():
    target = keys.parse_key(Keys.bundle_tombstone(UUIDS[0]))
    doc = {"email": "a@example.org", "reason": "gone", "details": None, "admin_deleted": True, "new_field": 1}
    assert keys.load_document(target, json.dumps(doc).encode()) == doc  # unknown fields pass
    for bad in (b"[1]", b"{", b'{"email": "a@example.org"}', b"\xff"):
        with pytest.raises(Unprocessable):
            keys.load_document(target, bad)
        assert not keys.is_valid_document(target, bad)
