"""The checkout service: owns each replica's checkout bucket, a cache from which clients read
bytes through signed URLs. One nameko service (``service.py``: deployment ``checkout``, its RPC
names), with two parts, each in a package of its own:

- ``file_reads``: GET /files and DRS objects and access, served from verified copies of blobs
  made on demand, warmed for new small files and refreshed when read near their expiry;
- ``bundle_jobs``: bundle checkout jobs (POST /bundles/{uuid}/checkout, and GET /bundles with
  URLs), durable in the checkout bucket, with an e-mail to the caller when a job ends.

Beside them, what both use: ``copies`` (server-side copies, verified), ``lifetime`` (the stamp a
verified copy carries and how long it lives) and ``sweeping`` (the sweeper that deletes what expired,
whichever part wrote it); and the service's skeleton: ``dependencies``, ``schemas``, ``exceptions``.

Checkout bucket layout (per replica; not replicated):

- ``blobs/{sha256}.{sha1}.{s3_etag}.{crc32c}``: a file read's copy of that blob, stamped
  ``dss-checked-out`` (when it was made and verified), with the content type of the file it was
  first checked out for;
- ``copying/blobs/...``: a marker while a background copy of that blob is under way (file reads);
- ``bundles/{uuid}.{version}/{name}``: the files of a bundle checkout, stamped the same way;
- ``checkout-jobs/{id}.json``: a bundle checkout job's record;
- ``mail-quota/{hour}/{caller}/{job_id}``: the job notices sent to each caller per hour (kept in the
  first replica's bucket).
"""
