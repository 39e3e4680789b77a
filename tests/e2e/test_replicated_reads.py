"""Reads across replicas: what is written through one replica becomes readable from the other once
the replicator has copied it (bucket notifications -> bus -> replicator), and 404 until then."""
import hashlib
import time
import urllib.parse

from devtools import http
from shared.identifiers import new_uuid, new_version
from devtools.waiting import wait_until

OTHER = {"aws": "gcp", "gcp": "aws"}


def wait_for(url, params, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(url, params=params, allow_redirects=False)
        if response.status_code != 404:
            return response
        assert time.monotonic() < deadline, f"{url} {params} still 404 after {timeout}s"
        time.sleep(0.1)


def test_files_and_bundles_written_in_either_replica_become_readable_in_the_other(replicated_api, auth, stage):
    api = replicated_api
    for replica in ("aws", "gcp"):
        data = f"written through {replica}".encode()
        source_url, sums = stage(data, replica=replica)
        file_uuid, version = new_uuid(), new_version()
        put = http.put(f"{api}/files/{file_uuid}", params={"version": version}, headers=auth,
                       json={"source_url": source_url, "creator_uid": 1})
        assert put.status_code == 201, put.text
        bundle_uuid = new_uuid()
        put = http.put(f"{api}/bundles/{bundle_uuid}", params={"replica": replica, "version": version},
                       headers=auth, json={"creator_uid": 1, "files": [
                               {"uuid": file_uuid, "version": version, "name": "a.txt", "indexed": False}]})
        assert put.status_code == 201, put.text

        other = OTHER[replica]
        bundle = wait_for(f"{api}/bundles/{bundle_uuid}", {"replica": other})
        assert bundle.status_code == 200, bundle.text
        assert bundle.json()["bundle"]["files"][0]["sha256"] == sums.sha256
        # a bundle is copied only after its files, so the file is readable from there too
        redirect = http.get(f"{api}/files/{file_uuid}", params={"replica": other}, allow_redirects=False)
        assert redirect.status_code == 302
        assert hashlib.sha256(http.get(redirect.headers["Location"]).content).hexdigest() == sums.sha256


def test_a_collection_written_through_gcp_is_listed_from_aws(replicated_api, auth):
    """GET /collections reads the aws replica's owner index: a collection written through gcp
    appears there once the replicator has copied it and the bundles service indexed the copy."""
    api = replicated_api
    uuid, version = new_uuid(), new_version()
    put = http.put(f"{api}/collections", params={"replica": "gcp", "uuid": uuid, "version": version},
                   headers=auth, json={"name": "from gcp", "contents": []}, timeout=30)
    assert put.status_code == 201, put.text

    def listed():
        answer = http.get(f"{api}/collections", headers=auth, params={"per_page": 500}, timeout=30)
        assert answer.status_code == 200, answer.text
        return {"uuid": uuid, "version": version} in answer.json()["collections"]

    wait_until(listed, 60, f"collection {uuid} listed from aws")
    delete = http.delete(f"{api}/collections/{uuid}", params={"replica": "gcp"}, headers=auth, timeout=30)
    assert delete.status_code == 200, delete.text
    wait_until(lambda: not listed(), 60, f"collection {uuid} gone from the aws listing")


def test_get_files_asks_each_replica_for_the_content_disposition(replicated_api, auth, stage):
    """GET /files with ``content_disposition`` (a client's file name) redirects to a URL of each
    replica's store that answers with that Content-Disposition: S3's presigned GET (moto honours
    ``response-content-disposition``: the header is checked on the download), GCS's URL asks for it
    the same way (fake-gcs-server ignores the parameter, so the URL is checked; the signature that
    covers it on real GCS is checked in tests/conformance/test_blobstore.py)."""
    api = replicated_api
    data = b'{"report": 1}'
    source_url, sums = stage(data, replica="aws", content_type="application/json")
    file_uuid, version = new_uuid(), new_version()
    put = http.put(f"{api}/files/{file_uuid}", params={"version": version}, headers=auth,
                   json={"source_url": source_url, "creator_uid": 1})
    assert put.status_code == 201, put.text
    disposition = 'attachment; filename="report 1.json"'

    for replica in ("aws", "gcp"):
        params = {"replica": replica, "version": version, "content_disposition": disposition}

        def redirected():
            answer = http.get(f"{api}/files/{file_uuid}", params=params, allow_redirects=False)
            assert answer.status_code in (302, 301, 404), answer.text  # 404 until replicated, 301 while copying
            return answer.headers["Location"] if answer.status_code == 302 else None

        location = wait_until(redirected, 60, f"GET /files from {replica} redirecting to the bytes")
        download = http.get(location)
        assert download.status_code == 200 and hashlib.sha256(download.content).hexdigest() == sums.sha256
        if replica == "aws":
            assert download.headers["Content-Disposition"] == disposition
        else:
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
            assert query["response-content-disposition"] == disposition
