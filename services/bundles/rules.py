"""What a request to the bundles service must satisfy before anything is read or written: file
names, limits, paging, the caller, and the shapes of documents (the schemas of ``shared.schemas``
and ``schemas.py``); the checks raise the errors of ``exceptions.py``."""
from __future__ import annotations

from marshmallow import Schema, ValidationError

from shared.identifiers import normalize_uuid, normalize_version

from services.bundles import exceptions as errors
from services.bundles.schemas import MAX_ITEMS


def load(schema: Schema, data, what: str):
    try:
        return schema.load(data)
    except ValidationError as error:
        detail = str(error.messages)
        # A thousand bad entries would make an unreadable title: the first few say enough.
        raise errors.illegal_arguments(f"invalid {what}: {detail[:300]}{'...' if len(detail) > 300 else ''}") from None


def uuid_version(uuid: str, version: str | None) -> tuple[str, str | None]:
    # Re-checked here although the gateway validated them: they become storage keys.
    return normalize_uuid(uuid), (None if version is None else normalize_version(version))


def check_file_name(name: str) -> None:
    """Bundle file names are relative paths that stay inside the bundle when checked out."""
    if not name:
        raise errors.illegal_filename(name, "it is empty")
    if name.startswith("/"):
        raise errors.illegal_filename(name, "it must be relative, not start with /")
    if name.startswith("~/"):
        raise errors.illegal_filename(name, "it must not start with ~/")
    if "\\" in name:
        raise errors.illegal_filename(name, "it must not contain a backslash")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        raise errors.illegal_filename(name, "it must not contain control characters")
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            raise errors.illegal_filename(name, "it must not contain empty, . or .. path segments")


def check_unique_names(names) -> None:
    seen: set[str] = set()
    repeated = [name for name in names if name in seen or seen.add(name)]
    if repeated:
        raise errors.duplicate_filename(sorted(set(repeated)))


def check_limit(what: str, items: list) -> None:
    if len(items) > MAX_ITEMS:
        raise errors.too_many(what, len(items), MAX_ITEMS)


def check_page(start_at, per_page) -> None:
    if not isinstance(start_at, int) or isinstance(start_at, bool) or start_at < 0:
        raise errors.illegal_arguments(f"start_at must be a non-negative integer, not {start_at!r}")
    if not isinstance(per_page, int) or isinstance(per_page, bool) or per_page < 1:
        raise errors.illegal_arguments(f"per_page must be a positive integer, not {per_page!r}")


def caller_email(caller: dict | None) -> str:
    if not caller or not caller.get("email"):
        raise errors.authentication_required()
    return caller["email"]


def item_key(item: dict) -> tuple:
    return tuple(sorted(item.items()))


def dedupe(items: list[dict]) -> list[dict]:
    """Drop repeated collection items, keeping the first of each in order."""
    seen: set[tuple] = set()
    unique = []
    for item in items:
        key = item_key(item)
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique
