"""Reads across replicas: what is written through one replica becomes readable from the other once
the replicator has copied it (bucket notifications -> bus -> replicator), and 404 until then."""
import hashlib
import time

import requests

from shared.identifiers import new_uuid, new_version

OTHER = {"aws": "gcp", "gcp": "aws"}


def wait_for(url, params, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        response = requests.get(url, params=params, allow_redirects=False)
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
        put = requests.put(f"{api}/files/{file_uuid}", params={"version": version}, headers=auth,
                           json={"source_url": source_url, "creator_uid": 1})
        assert put.status_code == 201, put.text
        bundle_uuid = new_uuid()
        put = requests.put(f"{api}/bundles/{bundle_uuid}", params={"replica": replica, "version": version},
                           headers=auth, json={"creator_uid": 1, "files": [
                               {"uuid": file_uuid, "version": version, "name": "a.txt", "indexed": False}]})
        assert put.status_code == 201, put.text

        other = OTHER[replica]
        bundle = wait_for(f"{api}/bundles/{bundle_uuid}", {"replica": other})
        assert bundle.status_code == 200, bundle.text
        assert bundle.json()["bundle"]["files"][0]["sha256"] == sums.sha256
        # a bundle is copied only after its files, so the file is readable from there too
        redirect = requests.get(f"{api}/files/{file_uuid}", params={"replica": other}, allow_redirects=False)
        assert redirect.status_code == 302
        assert hashlib.sha256(requests.get(redirect.headers["Location"]).content).hexdigest() == sums.sha256
