"""The replicator service (skeleton).

Copies every object written to one replica's main bucket to the other, in dependency order, verified by checksum; bridges S3 (SQS) and GCS (Pub/Sub) change notifications onto the bus. Arrives with issue 3.
"""
