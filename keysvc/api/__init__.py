"""The edges: gRPC (protobuf to the domain, errors to status codes) and the HTTP endpoint of
GitHub secret scanning (github.py)."""
