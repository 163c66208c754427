"""Protecting an API server's routes with keysvc: one line per route.

Each module needs its framework, installed through the package's extras; none is imported
here, so `keysvc_client` itself still depends on grpcio and protobuf alone:

    integrations.starlette   Starlette                pip install 'keysvc-client[starlette]'
    integrations.fastapi     FastAPI                  pip install 'keysvc-client[fastapi]'
    integrations.flask       Flask                    pip install 'keysvc-client[flask]'
    integrations.grpc        gRPC API servers         (grpcio only)

docs/integrations.md says which form to use with each framework and what each guarantees.
"""
