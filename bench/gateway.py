"""The cost of a gateway asking keysvc: Envoy's ext_authz Check on every request.

    .venv/bin/python -m bench.gateway [--seconds 5] [--concurrency 8]

Four rows, each a closed loop of `--concurrency` clients for `--seconds` after a warm-up, on
one keysvc (`serve --gateway-routes examples/gateway-routes.toml`, the embedded default) and
one valid key, so every decision is the hot path:

- HTTP straight to the upstream (a minimal asyncio HTTP/1.1 server in a process of its own);
- the same request through Envoy (examples/envoy.yaml, .venv-envoy/bin/envoy), which asks keysvc's
  Check first: the difference is what the gateway and the check cost a request;
- Authorize over gRPC, and Check over gRPC with the same key, route and scopes, straight to
  keysvc: the difference is what the route table and Envoy's message shapes cost keysvc.

The server CPU column is keysvc's (every thread) per request. The load generator is this
Python process: its own limits bound the throughput of the fast rows.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import string
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from keysvc_client import KeyServiceClient
from keysvc_client.v1 import keysvc_pb2 as pb
from keysvc_client.v1 import keysvc_pb2_grpc as pb_grpc

from bench.load import process_cpu_seconds
from bench.processes import PYTHON, Child
from bench.report import Row, machine_line, progress, table
from keysvc.api.envoy_stubs.envoy.config.core.v3 import address_pb2
from keysvc.api.envoy_stubs.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
ENVOY = ROOT / ".venv-envoy" / "bin" / "envoy"
ENVOY_CONFIG = ROOT / "examples" / "envoy.yaml"
ROUTES = ROOT / "examples" / "gateway-routes.toml"
PATH = "/api/v1/links"
START_TIMEOUT = 60.0

# The upstream: answers every request 200 with a small JSON body, keep-alive, no parsing.
UPSTREAM = r"""
import asyncio, sys
BODY = b'{"data":[]}'
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(BODY), BODY)
async def serve(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    with open(sys.argv[1] + ".partial", "w") as out:
        out.write(str(server.sockets[0].getsockname()[1]))
    import os; os.replace(sys.argv[1] + ".partial", sys.argv[1])
    await server.serve_forever()
asyncio.run(main())
"""


class Latencies:
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.failures = 0

    def row(self, name: str, elapsed: float, cpu: float, result: str = "") -> Row:
        done = sorted(self.seconds)
        if not done:
            return Row(name, result=f"no request succeeded ({self.failures} failed)")
        failed = f"; {self.failures} failed" if self.failures else ""
        return Row(
            name,
            throughput=len(done) / elapsed,
            p50_ms=done[len(done) // 2] * 1000,
            p99_ms=done[min(len(done) - 1, int(len(done) * 0.99))] * 1000,
            server_us=cpu / len(done) * 1e6 if cpu else None,
            result=result + failed,
        )


async def closed_loop(
    concurrency: int, seconds: float, warmup: float, one: Callable[[int], Awaitable[bool]]
) -> tuple[Latencies, float]:
    """`concurrency` workers calling `one(worker)` back to back; the warm-up is not counted."""
    latencies = Latencies()
    counting = False
    stop_at = time.monotonic() + warmup + seconds

    async def worker(number: int) -> None:
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            ok = await one(number)
            took = time.perf_counter() - began
            if counting:
                if ok:
                    latencies.seconds.append(took)
                else:
                    latencies.failures += 1

    tasks = [asyncio.create_task(worker(n)) for n in range(concurrency)]
    await asyncio.sleep(warmup)
    counting = True
    began = time.monotonic()
    await asyncio.gather(*tasks)
    return latencies, time.monotonic() - began


class HttpClients:
    """Keep-alive HTTP/1.1 connections, one per worker, reading Content-Length bodies."""

    def __init__(self, port: int, concurrency: int, headers: dict[str, str]) -> None:
        self.port = port
        self.concurrency = concurrency
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.request = f"GET {PATH} HTTP/1.1\r\nhost: api\r\n{lines}\r\n".encode()
        self.streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def __aenter__(self) -> HttpClients:
        for _ in range(self.concurrency):
            self.streams.append(await asyncio.open_connection("127.0.0.1", self.port))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for _, writer in self.streams:
            writer.close()

    async def get(self, worker: int) -> bool:
        reader, writer = self.streams[worker]
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await reader.readexactly(length)
        return status == 200


def check_request(key: str) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = "GET", PATH
    http.headers["authorization"] = f"Bearer {key}"
    request.attributes.source.address.CopyFrom(
        address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=40000)
        )
    )
    return request


async def grpc_rows(target: str, key: str, pid: int, args: argparse.Namespace) -> list[Row]:
    rows = []
    authorize = pb.AuthorizeRequest(
        api_key=key, required_scopes=["links:read"], client_ip="127.0.0.1"
    )
    check = check_request(key)
    async with grpc.aio.insecure_channel(target) as channel:
        keysvc = pb_grpc.KeyServiceStub(channel)
        envoy = external_auth_pb2_grpc.AuthorizationStub(channel)

        async def one_authorize(_: int) -> bool:
            response = await keysvc.Authorize(authorize, timeout=5)
            return bool(response.allowed)

        async def one_check(_: int) -> bool:
            response = await envoy.Check(check, timeout=5)
            return response.status.code == 0

        for name, one in (
            ("Authorize, gRPC, to keysvc", one_authorize),
            ("Check (ext_authz), gRPC, to keysvc", one_check),
        ):
            progress(name)
            cpu = process_cpu_seconds(pid)
            latencies, elapsed = await closed_loop(args.concurrency, args.seconds, args.warmup, one)
            rows.append(latencies.row(name, elapsed, process_cpu_seconds(pid) - cpu))
    return rows


async def http_rows(
    upstream: int, envoy: int, key: str, pid: int, args: argparse.Namespace
) -> list[Row]:
    rows = []
    for name, port, headers in (
        (f"HTTP GET {PATH}, straight to the upstream", upstream, {}),
        (f"HTTP GET {PATH}, through Envoy + Check", envoy, {"authorization": f"Bearer {key}"}),
    ):
        progress(name)
        async with HttpClients(port, args.concurrency, headers) as clients:
            cpu = process_cpu_seconds(pid)
            latencies, elapsed = await closed_loop(
                args.concurrency, args.seconds, args.warmup, clients.get
            )
            rows.append(latencies.row(name, elapsed, process_cpu_seconds(pid) - cpu))
    return rows


def envoy_config(values: dict[str, str | int]) -> str:
    given = {name: str(value) for name, value in values.items()}
    return "".join(
        line if line.lstrip().startswith("#") else string.Template(line).substitute(given)
        for line in ENVOY_CONFIG.read_text().splitlines(keepends=True)
    )


def run(args: argparse.Namespace, workdir: Path) -> list[Row]:
    if not ENVOY.exists():
        raise SystemExit(f"bench.gateway: {ENVOY} is missing: run `make envoy`")
    children: list[Child] = []
    try:
        address_file = workdir / "keysvc.address"
        keysvc = Child(
            "keysvc",
            [
                PYTHON, "-m", "keysvc", "serve",
                "--listen", "127.0.0.1:0",
                "--data-dir", str(workdir / "data"),
                "--gateway-routes", str(ROUTES),
                "--address-file", str(address_file),
                "--log-level", "WARNING",
            ],
            log_path=workdir / "keysvc.log",
        )  # fmt: skip
        children.append(keysvc)
        target = keysvc.wait_for_file(address_file, START_TIMEOUT).split()[0]
        admin_token = keysvc.wait_for_file(workdir / "data" / "admin-token", START_TIMEOUT)
        with KeyServiceClient(target, admin_token=admin_token, timeout=10) as admin:
            key = admin.create_key("acct_bench", "Gateway bench", "live", ["links:read"]).secret

        port_file = workdir / "upstream.port"
        upstream = Child("upstream", [PYTHON, "-c", UPSTREAM, str(port_file)])
        children.append(upstream)
        upstream_port = int(upstream.wait_for_file(port_file, START_TIMEOUT))

        envoy_port = _free_port()
        config = workdir / "envoy.yaml"
        host, _, port = target.rpartition(":")
        config.write_text(
            envoy_config(
                {
                    "ENVOY_PORT": envoy_port,
                    "ENVOY_ADMIN_PORT": 0,
                    "UPSTREAM_HOST": "127.0.0.1",
                    "UPSTREAM_PORT": upstream_port,
                    "KEYSVC_HOST": host,
                    "KEYSVC_PORT": port,
                    "KEYSVC_AUTHORIZER_TOKEN": "unused-on-loopback",
                }
            )
        )
        envoy = Child(
            "envoy",
            [
                str(ENVOY), "--config-path", str(config), "--disable-hot-restart",
                "--concurrency", str(args.envoy_threads), "--log-level", "warning",
                "--admin-address-path", str(workdir / "envoy.admin"),
            ],
            log_path=workdir / "envoy.log",
        )  # fmt: skip
        children.append(envoy)
        envoy.wait_for_file(workdir / "envoy.admin", START_TIMEOUT)
        _wait_for_port(envoy, envoy_port)

        rows = asyncio.run(http_rows(upstream_port, envoy_port, key, keysvc.process.pid, args))
        rows += asyncio.run(grpc_rows(target, key, keysvc.process.pid, args))
        return rows
    finally:
        for child in reversed(children):
            child.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(child: Child, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not child.running:
            raise RuntimeError(f"{child.name} exited; log:\n{child.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{child.name} not listening on {port}; log:\n{child.log_tail()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured per row")
    parser.add_argument("--warmup", type=float, default=1.0, help="not measured, before each")
    parser.add_argument("--concurrency", type=int, default=8, help="clients per row")
    parser.add_argument("--envoy-threads", type=int, default=2, help="Envoy's --concurrency")
    args = parser.parse_args(argv)
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as workdir:
        rows = run(args, Path(workdir))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
