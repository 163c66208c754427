"""Protecting an API server's routes with keysvc: one line per route.

Each module needs its framework, installed through the package's extras; none is imported
here, so `keysvc_client` itself still depends on grpcio and protobuf alone:

    integrations.starlette   Starlette and FastAPI   pip install 'keysvc-client[starlette]'
    integrations.flask       Flask                   pip install 'keysvc-client[flask]'
    integrations.grpc        gRPC API servers        (grpcio only)
"""
