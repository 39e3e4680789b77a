"""The files service: ingests staged objects as verified, content-addressed blobs with their file
metadata (``ingest.py``, ``metadata.py``, ``claims.py``), and answers file metadata; see ``service.py``."""
