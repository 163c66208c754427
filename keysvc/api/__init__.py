"""The gRPC layer: translates protobuf to the domain and errors to status codes."""
