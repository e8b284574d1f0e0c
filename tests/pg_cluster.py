"""Throwaway PostgreSQL clusters of our own: a primary, a streaming standby, failover.

The shared server at 127.0.0.1:5432 cannot be used to test synchronous replication:
`synchronous_standby_names` is a server-wide setting, and a standby needs a cluster to copy.
These clusters are made with the distribution's initdb / pg_basebackup / pg_ctl in a
temporary directory, on a spare port, as the unprivileged `postgres` account (initdb refuses
to run as root), and always removed again (`PgCluster.destroy`).
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
from pathlib import Path

import psycopg

RUN_AS = "postgres"


def pg_bin(name: str) -> str:
    """The newest installed PostgreSQL's `name` (Debian keeps them in /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path is None:
        raise FileNotFoundError(f"PostgreSQL's {name} is not installed")
    return on_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(*args: str, timeout: float = 60) -> str:
    command = list(args)
    if os.geteuid() == 0:
        command = ["runuser", "-u", RUN_AS, "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd="/", check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def scratch_dir(prefix: str) -> Path:
    """A temporary directory the `postgres` account may write in."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        account = pwd.getpwnam(RUN_AS)
        os.chown(path, account.pw_uid, account.pw_gid)
    return path


class PgCluster:
    """One PostgreSQL cluster (data directory + port), started and stopped with pg_ctl."""

    def __init__(self, data: Path, port: int) -> None:
        self.data = data
        self.port = port

    @classmethod
    def primary(cls, root: Path, *, name: str = "primary") -> PgCluster:
        cluster = cls(root / name, free_port())
        _run(pg_bin("initdb"), "-D", str(cluster.data), "-U", "postgres", "--auth=trust", "--no-sync",
             "-E", "UTF8", "--locale=C.UTF-8")
        cluster.configure(wal_level="replica", max_wal_senders="5", hot_standby="on",
                          synchronous_commit="on", cluster_name=f"'{name}'")
        return cluster

    def configure(self, **settings: str) -> None:
        """Append to postgresql.conf (the last line for a setting wins)."""
        lines = [f"{key} = {value}" for key, value in settings.items()]
        lines += [f"port = {self.port}", "listen_addresses = '127.0.0.1'",
                  f"unix_socket_directories = '{self.data}'"]
        conf = "\n".join(lines) + "\n"
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as handle:
            handle.write(conf)

    def standby(self, root: Path, *, name: str = "standby") -> PgCluster:
        """A streaming standby copied from this (running) cluster; `name` is its
        application_name, for `synchronous_standby_names`."""
        copy = PgCluster(root / name, free_port())
        _run(pg_bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-D", str(copy.data), "-R", "-X", "stream", "--no-sync", "-c", "fast")
        copy.configure(cluster_name=f"'{name}'")
        return copy

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        _run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.data / "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        _run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def promote(self) -> None:
        _run(pg_bin("pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "promote")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def sql(self, statement: str, db: str = "postgres") -> list[tuple[object, ...]]:
        """Run one statement in autocommit (ALTER SYSTEM, CREATE DATABASE); its rows, if any."""
        with psycopg.connect(self.url(db), autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(statement)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def destroy(self) -> None:
        """Stop it if it runs (immediately: it is thrown away) and remove its files."""
        if self.running():
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.data, ignore_errors=True)
