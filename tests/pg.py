"""A throwaway PostgreSQL cluster from the installed server binaries.

Started once per test session on a free loopback port, or replaced by an existing server
named in ``RETENTION_TEST_DATABASE_URL``. ``initdb`` refuses to run as root, so under root
the cluster runs as the unprivileged ``postgres`` user (created by the Debian package).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def find_bindir() -> Path | None:
    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    bindir: Path
    root: Path
    port: int
    user: str | None  # OS user the server runs as (None: the current user)
    durable: bool = False  # fsync and synchronous commit on (benchmarks)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            user=self.user,
            cwd=self.root,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )

    def pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), *args)

    def start(self) -> None:
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {self.root}",
                "-c listen_addresses=127.0.0.1",
                "-c max_connections=200",
            ]
            + (
                []
                if self.durable
                else ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
            )
        )
        self.pg_ctl("-o", options, "-l", str(self.root / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()


@contextlib.contextmanager
def throwaway_cluster(*, durable: bool = False) -> Iterator[Cluster]:
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError(
            "no PostgreSQL server binaries (initdb) found: install the 'postgresql' package "
            "or set RETENTION_TEST_DATABASE_URL"
        )
    root = Path(tempfile.mkdtemp(prefix="retention-pg-"))
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    os.chmod(root, 0o755)
    cluster = Cluster(bindir=bindir, root=root, port=free_port(), user=user, durable=durable)
    try:
        cluster._run(
            "initdb",
            "-D",
            str(cluster.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        for attempt in range(5):
            try:
                cluster.start()
                break
            except subprocess.CalledProcessError:
                if attempt == 4:
                    log = (root / "server.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"PostgreSQL did not start:\n{log}") from None
                cluster.port = free_port()
                time.sleep(0.2)
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
