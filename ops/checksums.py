"""Print the four DSS checksums of a file, as a client must declare them on a staged object.

    python -m ops.checksums FILE             # JSON: {"sha256": ..., "sha1": ..., "s3_etag": ..., "crc32c": ...}
    python -m ops.checksums --tagging FILE   # S3 Tagging string: dss-sha256=...&dss-sha1=...&...

Reads the file once, in chunks (memory stays bounded whatever its size).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import urllib.parse
import warnings
from typing import Iterator

# The checksummer may import eventlet, which warns about its own deprecation: noise for a CLI.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

from shared.checksums import CHECKSUM_NAMES, Checksums, checksum_chunks  # noqa: E402

logger = logging.getLogger(__name__)

CHUNK_BYTES = 8 * 1024 * 1024
TAG_PREFIX = "dss-"


def _chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk


def file_checksums(path: str) -> Checksums:
    return checksum_chunks(_chunks(path), os.path.getsize(path))[0]


def staging_tags(checksums: Checksums) -> dict[str, str]:
    """The tags (or metadata) the files service reads from a staged object."""
    values = checksums.as_api()
    return {f"{TAG_PREFIX}{name}": values[name] for name in CHECKSUM_NAMES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.checksums", description=__doc__.split("\n\n")[0])
    parser.add_argument("file")
    parser.add_argument("--tagging", action="store_true", help="print an S3 Tagging string instead of JSON")
    args = parser.parse_args(argv)
    checksums = file_checksums(args.file)
    if args.tagging:
        print(urllib.parse.urlencode(staging_tags(checksums)))
    else:
        print(json.dumps(checksums.as_api()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
