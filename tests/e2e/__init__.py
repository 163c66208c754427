"""End-to-end tests: a real `keysvc serve` process, driven by the client, grpcurl and the CLI."""
