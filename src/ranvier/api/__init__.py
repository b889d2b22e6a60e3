"""The client-server API: what Matrix clients and bots talk to.

It calls core/ and nothing below it; see :mod:`ranvier.api.app` for the
HTTP application and the modules beside it for the endpoints.
"""

from ranvier.api.app import ClientApp

__all__ = ["ClientApp"]
