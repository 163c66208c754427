# keysvc: `keysvc serve` as a non-root user, serving TLS with a mounted certificate and key.
# The build runs the Makefile's own install step, so the image installs what CI installs.
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make install VENV=/opt/keysvc PYTHON=python3

# The final image: the virtualenv and nothing of the build (no make, no compilers, no sources).
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/keysvc --create-home keysvc
COPY --from=build /opt/keysvc /opt/keysvc
# Data (the SQLite file, the generated admin token) in the volume; TLS from the files mounted
# at /etc/keysvc/tls (the names of a Kubernetes TLS secret). The health check asks a second,
# plaintext listener that only the container's loopback reaches.
ENV PATH=/opt/keysvc/bin:$PATH \
    KEYSVC_DATA_DIR=/var/lib/keysvc \
    KEYSVC_LISTEN=0.0.0.0:50051 \
    KEYSVC_TLS_CERT=/etc/keysvc/tls/tls.crt \
    KEYSVC_TLS_KEY=/etc/keysvc/tls/tls.key \
    KEYSVC_HEALTH_LISTEN=127.0.0.1:50052 \
    PYTHONUNBUFFERED=1
USER keysvc
WORKDIR /var/lib/keysvc
VOLUME /var/lib/keysvc
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["keysvc", "health", "--target", "127.0.0.1:50052"]
ENTRYPOINT ["keysvc"]
CMD ["serve"]
