"""dbio-cli 1.5.5 and hca 8.0.0, unchanged, against this store: every `dss` command a user of the
old service relies on, from an upload to the bundle's deletion, through both replicas (what is
uploaded through aws is read back from gcp once the replicator has copied it).

Each step runs the real command line in the client's own virtualenv (tests/compat/clients.py),
over HTTPS, authenticated by a service-account key the stack was told to trust while running.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import uuid

import pytest
import requests

from devtools.tokens import create_service_account_key
from devtools.waiting import wait_until
from tests.compat.clients import CliFailed

# The first test of a machine also installs both clients (the session fixture): more than the
# suite-wide 300 s may be needed on a slow link.
pytestmark = [pytest.mark.compat, pytest.mark.timeout(900)]

MiB = 1024 * 1024
SEARCH_WAIT_S = 60
CHECKOUT_WAIT_S = 120
WEBHOOK_WAIT_S = 60
REPLICATION_WAIT_S = 120


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_upload_directory(root: pathlib.Path, title: str) -> dict[str, bytes]:
    """A directory of 13 files: text, one JSON metadata file (the upload marks *.json indexed), a
    3 MiB blob that takes the asynchronous paths, and 10 small ones in a subdirectory (more than a
    page of 10). Returns {bundle name: bytes}."""
    files = {
        "hello.txt": f"hello from the compatibility suite {uuid.uuid4()}\n".encode(),
        "project_0.json": json.dumps({"project_core": {"title": title}}).encode(),
        "big.bin": os.urandom(3 * MiB),
        **{f"parts/part-{n:02d}.txt": f"part {n} {uuid.uuid4()}\n".encode() for n in range(10)},
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def assert_downloaded(bundle_dir: pathlib.Path, files: dict[str, bytes], manifest: dict) -> None:
    """Every file `download` wrote under ``bundle_dir`` has the sha256 the bundle manifest declares
    and that of the bytes uploaded (the bytes too), and bundle.json is that manifest."""
    declared = {f["name"]: f["sha256"] for f in manifest["files"]}
    assert set(declared) == set(files)
    for name, data in files.items():
        downloaded = (bundle_dir / name).read_bytes()
        assert sha256(downloaded) == declared[name] == sha256(data), name
        assert downloaded == data, name
    written = json.loads((bundle_dir / "bundle.json").read_text())["bundle"]
    assert (written["uuid"], written["version"]) == (manifest["uuid"], manifest["version"])
    assert {f["name"]: f["sha256"] for f in written["files"]} == declared


def wait_for_bundle(cli, bundle_uuid: str, replica: str) -> dict:
    """`get-bundle` of ``replica`` once it has the bundle (404 until then), within REPLICATION_WAIT_S."""
    def replicated():
        try:
            return cli("get-bundle", "--uuid", bundle_uuid, "--replica", replica)["bundle"]
        except CliFailed as error:
            assert "not_found" in error.result.stderr, error  # only "not there yet" is waited out
            return None
    return wait_until(replicated, REPLICATION_WAIT_S, f"the bundle replicated to {replica}", interval=1)


def test_the_client_works_unchanged(cli, compat_stack, blobstores, receiver, tmp_path):
    settings = compat_stack.settings
    title = f"compat atlas {uuid.uuid4().hex[:8]}"
    source = tmp_path / "upload"
    files = make_upload_directory(source, title)

    # --- upload: staged through S3 with the client's checksum tags, PUT /files (the big one 202,
    #     then HEAD polled until 200), PUT /bundles.
    uploaded = cli("upload", "--src-dir", str(source), "--replica", "aws",
                   "--staging-bucket", settings.s3_staging_bucket, "--no-progress")
    bundle_uuid, version = uploaded["bundle_uuid"], uploaded["version"]
    by_name = {entry["name"]: entry for entry in uploaded["files"]}
    assert set(by_name) == set(files)
    hello = by_name["hello.txt"]
    staged_tags = blobstores["aws"].get_tags(settings.s3_staging_bucket, f"{hello['uuid']}/hello.txt")
    assert staged_tags[f"{cli.client.staging_tag_prefix}sha256"] == sha256(files["hello.txt"])

    # --- get-bundle, 10 files a page: the client follows Link and merges bundle.files.
    bundle = cli("get-bundle", "--uuid", bundle_uuid, "--replica", "aws", "--per-page", "10")["bundle"]
    assert bundle["version"] == version
    assert {f["name"]: f["sha256"] for f in bundle["files"]} == {n: sha256(d) for n, d in files.items()}
    assert {f["name"] for f in bundle["files"] if f["indexed"]} == {"project_0.json"}

    # --- download: redirects (big.bin: 301 + Retry-After while it is checked out), Range, sha256.
    cli("download", "--bundle-uuid", bundle_uuid, "--replica", "aws", "--download-dir", str(tmp_path / "down"))
    assert_downloaded(tmp_path / "down" / f"{bundle_uuid}.{version}", files, bundle)
    assert (tmp_path / "down" / cli.client.filestore).is_dir()

    # --- head-file and get-file (the bytes on stdout).
    head = cli.run("dss", "head-file", "--uuid", hello["uuid"], "--replica", "aws")
    assert head.returncode == 0 and "200" in head.stdout, head.stderr
    assert cli.raw("get-file", "--uuid", by_name["big.bin"]["uuid"], "--replica", "aws") == files["big.bin"]

    # --- post-search, once the indexer has the bundle.
    query = json.dumps({"query": {"match_phrase": {"files.project_json.project_core.title": title}}})
    fqid = f"{bundle_uuid}.{version}"

    def found():
        results = cli("post-search", "--replica", "aws", "--es-query", query)["results"]
        return [r["bundle_fqid"] for r in results] == [fqid]
    wait_until(found, SEARCH_WAIT_S, "the search finding the uploaded bundle", interval=1)
    raw = cli("post-search", "--replica", "aws", "--es-query", query, "--output-format", "raw")["results"]
    assert raw[0]["metadata"]["files"]["project_json"] == [{"project_core": {"title": title}}]
    assert {b["uuid"] for b in cli("get-bundles-all", "--replica", "aws")["bundles"]} == {bundle_uuid}

    # --- subscriptions: a JMESPath one on the next bundle, listed, notified, read, deleted.
    second_uuid = str(uuid.uuid4())
    subscription = cli("put-subscription", "--replica", "aws", "--callback-url", receiver.url("/ok"),
                       "--jmespath-query", f"bundle_info.uuid == '{second_uuid}'")["uuid"]
    listed = cli("get-subscriptions", "--replica", "aws")["subscriptions"]
    assert [s["uuid"] for s in listed] == [subscription]

    # --- put-bundle (a second bundle of two uploaded files) and patch-bundle (one more file).
    refs = [{"uuid": by_name[n]["uuid"], "version": by_name[n]["version"], "name": n, "indexed": False}
            for n in ("hello.txt", "big.bin")]
    created = cli("put-bundle", "--uuid", second_uuid, "--replica", "aws", "--creator-uid", "7",
                  "--files", *map(json.dumps, refs))
    part = by_name["parts/part-00.txt"]
    patched = cli("patch-bundle", "--uuid", second_uuid, "--replica", "aws", "--version", created["version"],
                  "--add-files", json.dumps({"uuid": part["uuid"], "version": part["version"],
                                             "name": "added.txt", "indexed": False}))
    assert patched["uuid"] == second_uuid and patched["version"] > created["version"]
    latest = cli("get-bundle", "--uuid", second_uuid, "--replica", "aws")["bundle"]
    assert (latest["version"], sorted(f["name"] for f in latest["files"])) == \
        (patched["version"], ["added.txt", "big.bin", "hello.txt"])
    wait_until(lambda: len(receiver.accepted()) >= 2, WEBHOOK_WAIT_S, "a notification of each new version")
    notified = sorted(r.payload()["match"]["bundle_version"] for r in receiver.accepted())
    assert notified[:2] == [created["version"], patched["version"]]
    assert cli("get-subscription", "--uuid", subscription, "--replica", "aws")["callback_url"] == receiver.url("/ok")
    cli("delete-subscription", "--uuid", subscription, "--replica", "aws")
    assert cli("get-subscriptions", "--replica", "aws")["subscriptions"] == []

    # --- collections: put, list (the caller's), get, delete.
    collection = str(uuid.uuid4())
    cli("put-collection", "--uuid", collection, "--replica", "aws", "--name", "compat", "--description", "d",
        "--details", "{}", "--contents",
        json.dumps({"type": "bundle", "uuid": bundle_uuid, "version": version}),
        json.dumps({"type": "file", "uuid": hello["uuid"], "version": hello["version"]}))
    assert [c["uuid"] for c in cli("get-collections")["collections"]] == [collection]
    stored = cli("get-collection", "--uuid", collection, "--replica", "aws")
    assert (stored["owner"], len(stored["contents"])) == (cli.email, 2)
    cli("delete-collection", "--uuid", collection, "--replica", "aws")
    assert cli("get-collections")["collections"] == []

    # --- bundle checkout: a job followed to its end, and GET /bundles with presigned URLs.
    job = cli("post-bundles-checkout", "--uuid", bundle_uuid, "--replica", "aws")["checkout_job_id"]

    def checked_out():
        status = cli("get-bundles-checkout", "--checkout-job-id", job, "--replica", "aws")
        assert status["status"] != "FAILED", status
        return status["status"] == "SUCCEEDED"
    wait_until(checked_out, CHECKOUT_WAIT_S, "the bundle checkout job succeeding", interval=1)
    with_urls = cli("get-bundle", "--uuid", bundle_uuid, "--replica", "aws", "--presignedurls", "true")
    urls = {f["name"]: f["url"] for f in with_urls["bundle"]["files"]}
    assert requests.get(urls["hello.txt"], timeout=30).content == files["hello.txt"]

    # --- the event journal, and the file as a GA4GH DRS object.
    events = cli("get-events", "--replica", "aws", "--from-date", version)["event_streams"]
    assert any(e["bundle_fqid"] == fqid and e["event_type"] == "CREATE" for e in events)
    drs = cli("get-ga4gh-drs-v1-objects", "--object-id", hello["uuid"], "--replica", "aws")
    assert {c["type"]: c["checksum"] for c in drs["checksums"]}["sha-256"] == sha256(files["hello.txt"])
    access_id = next(m["access_id"] for m in drs["access_methods"] if m["type"] == "s3")
    access = cli("get-ga4gh-drs-v1-objects-access", "--object-id", hello["uuid"], "--access-id", access_id,
                 "--replica", "aws")
    assert requests.get(access["url"], timeout=30).content == files["hello.txt"]

    # --- the gcp replica: the replicator copied what was uploaded through aws (files before the
    #     bundle), so download, get-file and head-file work there too, with the same sha256.
    replicated = wait_for_bundle(cli, bundle_uuid, "gcp")
    assert (replicated["version"], replicated["files"]) == (version, bundle["files"])
    cli("download", "--bundle-uuid", bundle_uuid, "--replica", "gcp", "--download-dir", str(tmp_path / "down-gcp"))
    assert_downloaded(tmp_path / "down-gcp" / f"{bundle_uuid}.{version}", files, replicated)
    for name in ("big.bin", "hello.txt"):
        from_gcp = cli.raw("get-file", "--uuid", by_name[name]["uuid"], "--replica", "gcp")
        assert sha256(from_gcp) == sha256(files[name]) and from_gcp == files[name], name
    head = cli.run("dss", "head-file", "--uuid", hello["uuid"], "--replica", "gcp")
    assert head.returncode == 0 and "200" in head.stdout, head.stderr

    # --- delete-bundle (the account is an administrator by its identity: DSS_ADMIN_EMAILS names it), then it is gone.
    cli("delete-bundle", "--uuid", bundle_uuid, "--replica", "aws", "--reason", "compatibility test")
    with pytest.raises(CliFailed) as gone:
        cli("get-bundle", "--uuid", bundle_uuid, "--replica", "aws")
    assert "not_found" in gone.value.result.stderr


def test_an_untrusted_service_account_is_refused(cli, tmp_path):
    """The same client with the key of an account the store was never told about: 401."""
    stranger = tmp_path / "stranger.json"
    create_service_account_key("stranger@dss-local.iam.example.org", stranger, tmp_path / "trusted-nowhere.json")
    cli.env["GOOGLE_APPLICATION_CREDENTIALS"] = str(stranger)
    result = cli.run("dss", "get-collections")
    assert result.returncode != 0 and "401" in result.stderr, result.stderr
    secret = json.loads(stranger.read_text())["private_key"]
    assert secret not in result.stderr + result.stdout


def test_reads_follow_the_access_policy(compat_stack, access_mode):
    """Without a token, a read is answered in the public mode and refused (401) in the private one,
    where the description stays open: clients read it to learn where to send their token."""
    anonymous = requests.get(f"{compat_stack.url}/v1/bundles/all", params={"replica": "aws"},
                             verify=compat_stack.ca_file, timeout=30)
    assert anonymous.status_code == (401 if access_mode == "private" else 200), anonymous.text
    description = requests.get(f"{compat_stack.url}/v1/swagger.json", verify=compat_stack.ca_file, timeout=30)
    assert description.status_code == 200
    secured = {op["operationId"] for path in description.json()["paths"].values() for op in path.values()
               if isinstance(op, dict) and op.get("security")}
    assert ("getFile" in secured) == (access_mode == "private")
