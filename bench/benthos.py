"""Build Benthos (the Go stream processor) for the benchmarks: ``.stack/bin/benthos``.

The binary is built once from ``bench/benthos`` (a ``main.go`` importing only the components the
benchmark uses, ``go.mod`` pinning the MIT-licensed ``github.com/benthosdev/benthos/v4``) and
kept; it is rebuilt only when it is missing or ``go.mod``/``main.go`` changed (a stamp beside it
records their hash, the version and how long the build took). The Go module proxy configured for
``go`` serves the sources; nothing else is downloaded.

    .venv/bin/python -m bench.benthos            # build if needed, print the stamp
    .venv/bin/python -m bench.benthos --rebuild  # build again

v4.27.0 is the version pinned: the last 4.x of ``benthosdev/benthos`` before the project moved to
``redpanda-data``; it still ships the ``amqp_0_9`` input and the ``kafka`` / ``kafka_franz``
outputs (``redpanda-data/benthos`` no longer bundles them, and ``redpanda-data/connect`` is not
MIT throughout). The proxy refuses to list the module's versions here, so the version is named.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "bench" / "benthos"
BINARY = ROOT / ".stack" / "bin" / "benthos"
STAMP = BINARY.with_name("benthos.build.json")
MODULE = "github.com/benthosdev/benthos/v4"
BUILD_TIMEOUT_S = 1200  # a cold build on 2 shared cores: ~1.5 min with a warm module cache


class BenthosUnavailable(RuntimeError):
    """Benthos could not be built here (no Go, or the build failed): the message says why."""


def pinned_version() -> str:
    for line in (SOURCE / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[-2] == MODULE:
            return parts[-1]
        if len(parts) >= 3 and parts[0] == "require" and parts[1] == MODULE:
            return parts[2]
    raise BenthosUnavailable(f"bench/benthos/go.mod does not require {MODULE}")


def _source_hash() -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        path = SOURCE / name
        if path.exists():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _read_stamp() -> dict[str, Any]:
    try:
        return json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return {}


def go_env() -> dict[str, str]:
    """The environment of every go command here: go.mod may be updated (``-mod=mod``) and the
    machine's own Go is used (``GOTOOLCHAIN=local``: no toolchain download)."""
    return dict(os.environ, GOFLAGS="-mod=mod", GOTOOLCHAIN="local")


def ensure_benthos(rebuild: bool = False, log: Any = sys.stderr) -> dict[str, Any]:
    """The built binary's stamp: {path, version, build_seconds, built_at, cached}. Builds when
    the binary is missing or its sources changed. Raises ``BenthosUnavailable`` with the error."""
    stamp = _read_stamp()
    source_hash = _source_hash()
    if (not rebuild and BINARY.exists() and os.access(BINARY, os.X_OK)
            and stamp.get("source_hash") in (None, source_hash)):
        if not stamp:  # a binary built by hand: describe it once
            stamp = {"version": pinned_version(), "build_seconds": None,
                     "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                               time.gmtime(BINARY.stat().st_mtime)),
                     "source_hash": source_hash}
            STAMP.write_text(json.dumps(stamp, indent=2) + "\n")
        return {**stamp, "path": str(BINARY), "cached": True}
    go = shutil.which("go")
    if go is None:
        raise BenthosUnavailable("no `go` on PATH: Benthos cannot be built here")
    version = pinned_version()
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    partial = BINARY.with_name("benthos.partial")
    print(f"benthos: building {MODULE} {version} into {BINARY} (minutes on 2 cores)...",
          file=log, flush=True)
    started = time.monotonic()
    try:
        done = subprocess.run([go, "build", "-trimpath", "-o", str(partial), "."], cwd=SOURCE,
                              env=go_env(), capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise BenthosUnavailable(f"go build of {MODULE} {version} took over "
                                 f"{BUILD_TIMEOUT_S}s") from exc
    seconds = round(time.monotonic() - started, 1)
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines()
                 if line and not line.startswith("go: downloading")]
        raise BenthosUnavailable(f"go build of {MODULE} {version} failed (exit "
                                 f"{done.returncode}): " + " | ".join(lines[-8:]))
    partial.replace(BINARY)
    stamp = {"version": version, "build_seconds": seconds,
             "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "go": subprocess.run([go, "version"], capture_output=True, text=True,
                                  env=go_env()).stdout.strip(),
             "source_hash": source_hash}
    STAMP.write_text(json.dumps(stamp, indent=2) + "\n")
    print(f"benthos: built in {seconds}s", file=log, flush=True)
    return {**stamp, "path": str(BINARY), "cached": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.benthos", description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(ensure_benthos(rebuild=args.rebuild), indent=2))
    except BenthosUnavailable as exc:
        print(f"benthos: not available: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
