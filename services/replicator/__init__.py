"""The replicator service.

Copies every object written to one replica's main bucket to the other, in dependency order,
verified by checksum (``service.py``, ``replication.py``); bridges S3 (SQS) and GCS (Pub/Sub)
change notifications onto the bus (``bridge.py``). ``dss-ops replicas verify|repair`` compares the
two main buckets and re-enqueues what differs (``ops/replicas.py``).
"""
