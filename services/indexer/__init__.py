"""The indexer service: each replica's search index (POST /search) and bundle event journal
(GET /events), kept from the bundles' and the replicator's events; see ``service.py``."""
