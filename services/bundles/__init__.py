"""The bundles service: bundle manifests and collections in the replicas' main buckets (``manifests.py``,
``collection_documents.py``), written once, checked by ``rules.py``; see ``service.py``."""
