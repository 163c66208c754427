"""Regenerates the Python client's protobuf and gRPC modules from protos/.

protoc names the generated modules after the proto package (`keysvc.v1`),
which would collide with the server package `keysvc`; they are moved into
`keysvc_client.v1` and their imports rewritten to match.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
TARGET = ROOT / "clients" / "python" / "src" / "keysvc_client" / "v1"
PROTO = "keysvc/v1/keysvc.proto"
GENERATED = ("keysvc_pb2.py", "keysvc_pb2.pyi", "keysvc_pb2_grpc.py", "keysvc_pb2_grpc.pyi")


def main() -> int:
    include = resources.files("grpc_tools") / "_proto"
    plugins = Path(sys.executable).parent
    mypy_plugin = shutil.which("protoc-gen-mypy", path=str(plugins))
    mypy_grpc = shutil.which("protoc-gen-mypy_grpc", path=str(plugins))
    if mypy_plugin is None or mypy_grpc is None:
        print("mypy-protobuf's protoc plugins not found: install the dev extras", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as out:
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--python_out={out}",
            f"--plugin=protoc-gen-mypy={mypy_plugin}",
            f"--mypy_out={out}",
            f"--grpc_python_out={out}",
            f"--plugin=protoc-gen-mypy_grpc={mypy_grpc}",
            f"--mypy_grpc_out={out}",
            PROTO,
        ]
        if protoc.main(args) != 0:
            return 1
        TARGET.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            text = (Path(out) / "keysvc" / "v1" / name).read_text()
            text = re.sub(r"\bkeysvc\.v1\b(?=\s+import|\.keysvc_pb2)", "keysvc_client.v1", text)
            (TARGET / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
