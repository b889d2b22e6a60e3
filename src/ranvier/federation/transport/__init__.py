"""The federation transport: the HTTP server with X-Matrix authentication,
TLS, the listeners that serve it, and signing of outgoing requests."""
