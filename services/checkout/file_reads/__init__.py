"""File reads, one of the checkout service's two parts: GET /files and DRS objects and access,
answered with presigned URLs of verified copies of blobs in a replica's checkout bucket.

- ``reads``: the API the service's file entrypoints call (``FileReadsAPI``): metadata, copies
  made inline, in the background or warmed, their markers, the per-process state, DRS lookups;
- ``blobs``: what a read checks out (``Blob``); ``tokens``: the token of a client told to come
  back while a large copy runs; ``drs``: GA4GH DRS 1.4 documents of files and bundles.

A copy's stamp and lifetime are the checkout bucket's (``services.checkout.lifetime``), its
deletion the sweeper's (``services.checkout.sweeping``).
"""
