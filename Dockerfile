# keysvc: `keysvc serve` as a non-root user. The build runs the Makefile's own install step.
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
ENV PATH=/opt/keysvc/bin:$PATH \
    KEYSVC_DATA_DIR=/var/lib/keysvc \
    KEYSVC_LISTEN=0.0.0.0:50051 \
    PYTHONUNBUFFERED=1
USER keysvc
WORKDIR /var/lib/keysvc
EXPOSE 50051
ENTRYPOINT ["keysvc"]
CMD ["serve"]
