"""The HTTP gateway: the DSS v1 API under /v1, in front of the files and bundles services."""
