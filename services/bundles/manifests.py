"""Bundle manifests (``bundles/{uuid}.{version}``) and their tombstones in the replicas' main
buckets: written once from resolved file references, read a page of files at a time, patched into
new versions, hidden by tombstones, listed.

Every object is written once and never changed, which is what makes the rules here simple: a
repeat write with the same content is a no-op, with different content a conflict; a tombstone
hides what it names without deleting it; anything read can be cached forever.
"""
from __future__ import annotations

import itertools
import logging

from marshmallow import EXCLUDE

from shared.concurrency import green_map
from shared.exceptions import InvalidParameter, bundle_not_found
from shared.identifiers import Keys, fqid, new_version, split_fqid
from shared.schemas import BundleManifest, FileMetadata, ManifestFile, Tombstone
from shared.storage import ALL_VERSIONS, Replicas

from services.bundles import exceptions as errors
from services.bundles.documents import LOOKUP_CONCURRENCY, Written, version_groups, write_once
from services.bundles.rules import caller_email, check_file_name, check_limit, check_page, check_unique_names, \
    load, uuid_version
from services.bundles.schemas import BundleFileId, BundleFileRef, BundleFileView

logger = logging.getLogger(__name__)

_FILE_METADATA = FileMetadata(unknown=EXCLUDE)
_MANIFEST = BundleManifest()
_MANIFEST_FILES = ManifestFile(many=True)
_FILE_VIEW = BundleFileView(many=True)
_CHECKSUMMED_FIELDS = ("content_type", "size", "crc32c", "s3_etag", "sha1", "sha256")


class BundleManifests:
    """The bundle manifests and tombstones of both replicas."""

    def __init__(self, replicas: Replicas):
        self.replicas = replicas

    def put_manifest(self, replica: str, uuid: str, version: str, creator_uid: int, files: list) -> Written:
        """Resolve ``files`` on ``replica`` and write the manifest of ``{uuid}.{version}`` once."""
        uuid, version = uuid_version(uuid, version)
        if not isinstance(creator_uid, int) or isinstance(creator_uid, bool):
            raise errors.illegal_arguments(f"creator_uid must be an integer, not {creator_uid!r}")
        refs = load(BundleFileRef(many=True), files, "files")
        manifest = _MANIFEST.dump({"version": version, "creator_uid": creator_uid,
                                   "files": self.resolve_files(replica, refs)})
        return write_once(self.replicas[replica], Keys.bundle(uuid, version), uuid, version, manifest,
                                lambda: errors.bundle_already_exists(uuid, version))

    def resolve_files(self, replica: str, refs: list[dict]) -> list[dict]:
        """Manifest entries for file references: names checked, every file looked up concurrently."""
        for ref in refs:
            check_file_name(ref["name"])
        check_unique_names(ref["name"] for ref in refs)
        storage = self.replicas[replica]
        docs = green_map(lambda ref: storage.find_json(Keys.file(ref["uuid"], ref["version"])), refs, LOOKUP_CONCURRENCY)
        missing = [fqid(ref["uuid"], ref["version"]) for ref, doc in zip(refs, docs) if doc is None]
        if missing:
            raise errors.file_missing(replica, missing)
        entries = []
        for ref, doc in zip(refs, docs):
            metadata = _FILE_METADATA.load(doc)
            entries.append({**ref, **{field: metadata[field] for field in _CHECKSUMMED_FIELDS}})
        return entries

    def live_bundle_version(self, replica: str, uuid: str, version: str | None = None) -> str:
        """``version`` (or the latest one if None) if its manifest exists and no tombstone hides it."""
        live = self.replicas[replica].live_version(Keys.bundle_prefix(uuid), version)
        if live is None:
            raise bundle_not_found(replica, uuid, version)
        return live

    def get_manifest(self, replica: str, uuid: str, version: str | None = None) -> tuple[str, dict]:
        uuid, version = uuid_version(uuid, version)
        version = self.live_bundle_version(replica, uuid, version)
        return version, self.replicas[replica].read_json(Keys.bundle(uuid, version))

    def get_bundle_page(self, replica: str, uuid: str, version: str | None, start_at: int, per_page: int) -> dict:
        check_page(start_at, per_page)
        uuid, _ = uuid_version(uuid, None)
        version, manifest = self.get_manifest(replica, uuid, version)
        files = manifest["files"]
        end = start_at + per_page
        page = _FILE_VIEW.dump(_MANIFEST_FILES.load(files[start_at:end]))
        return {"bundle": {"uuid": uuid, "version": version, "creator_uid": manifest["creator_uid"], "files": page},
                "next_start_at": end if end < len(files) else None}

    def patch_manifest(self, replica: str, uuid: str, version: str | None, add_files: list | None,
                       remove_files: list | None) -> Written:
        """A new version of the bundle: the base version's files minus ``remove_files`` (matched on
        name, uuid and version) plus ``add_files`` (resolved like a PUT)."""
        add_files, remove_files = add_files or [], remove_files or []
        check_limit("add_files", add_files)
        check_limit("remove_files", remove_files)
        adds = load(BundleFileRef(many=True), add_files, "add_files")
        removed = {(ref["name"], ref["uuid"], ref["version"])
                   for ref in load(BundleFileId(many=True), remove_files, "remove_files")}
        uuid, _ = uuid_version(uuid, None)
        base_version, base = self.get_manifest(replica, uuid, version)
        kept = [entry for entry in _MANIFEST.load(base)["files"]
                if (entry["name"], entry["uuid"], entry["version"]) not in removed]
        files = kept + self.resolve_files(replica, adds)
        check_unique_names(entry["name"] for entry in files)
        new = new_version()
        manifest = _MANIFEST.dump({"version": new, "creator_uid": base["creator_uid"], "files": files})
        logger.info("bundle %s patched from %s to %s (-%d +%d files)", uuid, base_version, new,
                    len(base["files"]) - len(kept), len(adds))
        return write_once(self.replicas[replica], Keys.bundle(uuid, new), uuid, new, manifest,
                                lambda: errors.bundle_already_exists(uuid, new))

    def put_bundle_tombstone(self, replica: str, uuid: str, version: str | None, reason: str, details,
                             caller: dict | None) -> Written:
        """Tombstone one version, or every version if ``version`` is None (administrators only)."""
        email = caller_email(caller)
        if not caller.get("is_admin"):
            raise errors.not_admin(email)
        if not isinstance(reason, str) or not reason.strip():
            raise errors.illegal_arguments("a reason is required to delete a bundle")
        uuid, version = uuid_version(uuid, version)
        versions, _ = self.replicas[replica].versions(Keys.bundle_prefix(uuid))
        if not versions or (version is not None and version not in versions):
            raise bundle_not_found(replica, uuid, version)
        key = Keys.bundle_tombstone(uuid, version)
        doc = Tombstone().dump({"email": email, "reason": reason, "details": details, "admin_deleted": True})
        return write_once(self.replicas[replica], key, uuid, version, doc, lambda: errors.bundle_tombstone_exists(key))

    def list_live_bundles(self, replica: str, prefix: str, per_page: int, search_after: str | None) -> dict:
        """A page of live ``{uuid, version}`` in key order; the cursor is the last fqid returned."""
        check_page(0, per_page)
        prefix = (prefix or "").lower()
        if any(char not in "0123456789abcdef-" for char in prefix):
            raise errors.illegal_arguments(f"prefix {prefix!r} is not the beginning of a uuid")
        start_after = None
        if search_after:
            try:
                cursor_uuid, cursor_version = split_fqid(search_after)
            except InvalidParameter:
                cursor_version = None
            if cursor_version is None:
                raise InvalidParameter(f"search_after {search_after!r} is not a cursor this API returned",
                                       "illegal_search_after")
            start_after = Keys.bundle(cursor_uuid, cursor_version)
        groups = version_groups(self.replicas[replica], Keys.bundle_prefix(), prefix, start_after)
        live = ({"uuid": uuid, "version": version}
                for uuid, versions, dead in groups
                if ALL_VERSIONS not in dead
                for version in versions if version not in dead)
        # One more than a page tells whether another page exists, so the last page has no cursor.
        found = list(itertools.islice(live, per_page + 1))
        page = found[:per_page]
        more = len(found) > per_page
        return {"bundles": page, "search_after": fqid(page[-1]["uuid"], page[-1]["version"]) if more else None}
