"""The errors of the checkout service: the shared typed errors with this service's codes.

No new exception classes, as in the other services: the gateway rebuilds a remote error as its
type only if its process registered that type, and it imports ``shared.exceptions``.
"""
