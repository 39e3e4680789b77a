"""Errors only the gateway raises (the services' errors are the shared ones)."""
from shared.exceptions import DSSError


class MethodNotAllowed(DSSError):
    """The path exists but not with this HTTP method (405)."""
    code = "method_not_allowed"
