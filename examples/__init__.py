"""Runnable examples of keysvc's client; `make example` starts api_server."""
