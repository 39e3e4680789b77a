"""The cache of built client wheels (tests/compat/clients.py): a wheel is reused only while it has
the sha256 recorded when it was built; a damaged one, or one without a record, is built again."""
from __future__ import annotations

import hashlib
import pathlib
import shutil
import subprocess
import zipfile

import pytest

from tests.compat import clients

pytestmark = [pytest.mark.compat, pytest.mark.timeout(600)]

CLIENT = clients.CLIENTS["dbio"]


def sha256_of(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A cache of this test's own holding only the client's sdist (copied from the machine's cache
    when it is there, so no download is needed), and a virtualenv to build with."""
    machine_sdist = clients.cache_root() / "sdists" / CLIENT.sdist_name
    cache = tmp_path / "cache"
    monkeypatch.setenv("DSS_COMPAT_CACHE", str(cache))
    if machine_sdist.exists():
        (cache / "sdists").mkdir(parents=True)
        shutil.copyfile(machine_sdist, cache / "sdists" / CLIENT.sdist_name)
    venv = tmp_path / "venv"
    subprocess.run([clients._base_python(), "-m", "venv", str(venv)], check=True, timeout=120)
    return venv


def test_a_cached_wheel_is_reused_only_while_it_matches_its_recorded_sha256(empty_cache, caplog):
    venv = empty_cache
    caplog.set_level("WARNING", logger=clients.__name__)

    wheel = clients._wheel(CLIENT, venv)
    record = clients.wheel_digest_file(wheel)
    assert record.read_text().strip() == sha256_of(wheel)
    assert zipfile.ZipFile(wheel).testzip() is None

    # Intact: the very same file, not built again.
    first = wheel.stat()
    assert clients._wheel(CLIENT, venv) == wheel
    assert (wheel.stat().st_ino, wheel.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert not caplog.records

    # Damaged (a truncated copy, say): built again, and the new bytes recorded.
    damaged = wheel.read_bytes()[:-100]
    wheel.write_bytes(damaged)
    rebuilt = clients._wheel(CLIENT, venv)
    assert [r.getMessage() for r in caplog.records] == [
        f"cached wheel {wheel} does not match its recorded sha256 (or has none): building it again"]
    assert rebuilt.name == wheel.name and rebuilt.read_bytes() != damaged
    assert clients.wheel_digest_file(rebuilt).read_text().strip() == sha256_of(rebuilt)
    assert zipfile.ZipFile(rebuilt).testzip() is None

    # No record (an interrupted build, or a cache from before records): built again too.
    clients.wheel_digest_file(rebuilt).unlink()
    caplog.clear()
    again = clients._wheel(CLIENT, venv)
    assert len(caplog.records) == 1 and "building it again" in caplog.records[0].getMessage()
    assert clients.wheel_digest_file(again).read_text().strip() == sha256_of(again)
    assert sorted(p.name for p in again.parent.iterdir()) == sorted([again.name, f"{again.name}.sha256"])
