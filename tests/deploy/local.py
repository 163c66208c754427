"""What a container engine would run, run here instead: the Dockerfile's final stage and the
compose file, read as written, started as local processes.

No engine runs on these machines, so the image cannot be built. What can be checked is what
matters once it is: that the command and the environment the image gives keysvc make a
server that starts, serves TLS, answers its health check and the walk-through. An image's
paths (/opt/keysvc, /var/lib/keysvc, /etc/keysvc/tls) are mapped onto directories of the
test's, as `-v` would mount them, and its ports onto free ones, as `-p` would publish them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
# Where the image installs keysvc: the venv these tests run from installed the same packages.
IMAGE_VENV = "/opt/keysvc"
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::\?[^}]*)?\}")


@dataclass
class Image:
    """The final stage of a Dockerfile: what `docker run` gives the process."""

    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    user: str
    workdir: str
    volumes: list[str]
    healthcheck: list[str]

    @classmethod
    def read(cls, dockerfile: Path = REPO / "Dockerfile") -> Image:
        parser = DockerfileParser(path=str(dockerfile))
        final: dict[str, str] = {}
        for instruction in parser.structure:
            name = instruction["instruction"]
            if name == "FROM":
                final = {}
            final[name] = instruction["value"]
        health = final.get("HEALTHCHECK", "")
        return cls(
            env=dict(parser.envs),
            entrypoint=json.loads(final["ENTRYPOINT"]),
            cmd=json.loads(final["CMD"]),
            user=final["USER"],
            workdir=final["WORKDIR"],
            volumes=final.get("VOLUME", "").split(),
            healthcheck=json.loads(health.split("CMD", 1)[1]) if "CMD" in health else [],
        )


@dataclass
class Mounts:
    """Image paths and the local directories standing in for them."""

    paths: dict[str, Path]

    def apply(self, value: str) -> str:
        for image_path, local in self.paths.items():
            value = value.replace(image_path, str(local))
        return value


def environment(image: Image, mounts: Mounts, extra: Mapping[str, str] = {}) -> dict[str, str]:
    """The process environment `docker run` would give: the image's ENV, then `extra` (its
    `-e` options), mounted paths mapped; PATH keeps this machine's after the image's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSVC_")}
    for name, value in {**image.env, **extra}.items():
        env[name] = mounts.apply(value)
    env["PATH"] = mounts.apply(image.env["PATH"].rstrip(":")) + os.pathsep + os.environ["PATH"]
    return env


def local_mounts(volume: Path, tls: Path) -> Mounts:
    return Mounts({IMAGE_VENV: Path(sys.prefix), "/var/lib/keysvc": volume, "/etc/keysvc/tls": tls})


def run(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def substitute(value: Any, variables: Mapping[str, str]) -> Any:
    """`value` from the compose file with ${NAME} and ${NAME:?message} filled in."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: variables[m["name"]], value)
    if isinstance(value, list):
        return [substitute(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: substitute(item, variables) for key, item in value.items()}
    return value


def compose(path: Path = REPO / "compose.yaml") -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded
