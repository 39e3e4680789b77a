"""The indexer service (skeleton).

Indexes bundles' JSON metadata per replica for Elasticsearch-style search (embedded engine or OpenSearch). Arrives with issue 4.
"""
