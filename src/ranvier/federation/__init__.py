"""Talking to other homeservers: the HTTP transport, and (later) incoming
transactions, outgoing requests and the keys that authenticate both."""
