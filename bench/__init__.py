"""keysvc's benchmark: `make bench` (or `python -m bench`) measures Authorize against a
no-op server on the same gRPC stack and prints one table; see docs/benchmark.md."""
