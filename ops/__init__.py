"""Operator commands of a running store (`dss-ops`), installed with the services: dead letters,
replica comparison and repair, search re-indexing, collection indexing, and the provisioning of
emulated deployments."""
