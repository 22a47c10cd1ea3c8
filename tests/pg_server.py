"""A throwaway PostgreSQL server for the tests: ``initdb`` into a temporary folder, listening on
a free port of 127.0.0.1 only, with its socket in that folder, stopped and deleted afterwards.

It needs the server's programs (Debian's ``postgresql`` package puts them in
/usr/lib/postgresql/<version>/bin; ``.ci/run`` installs it). PostgreSQL refuses to run as root,
so under root the server runs as the ``postgres`` user the package creates (else ``nobody``),
through ``subprocess``'s ``user=``/``group=``: no sudo, runuser or setpriv needed. Nothing here
uses a cluster the package may have started itself.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: the superuser initdb creates; it logs in through the socket only (trust), never over TCP
ADMIN = "admin"
#: a role that logs in over TCP with a password (scram-sha-256), and the database it owns
ROLE = "sweeper"
DATABASE = "sweeps"
#: speed over durability: the cluster is thrown away at the end
FAST = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")


class Unavailable(RuntimeError):
    """No PostgreSQL server could be started here (the reason is the message)."""


def find_bin_dir() -> Path | None:
    """The folder holding initdb, pg_ctl and psql: $MLPLAB_PG_BIN, the PATH, then the usual
    packaged locations (the newest version first)."""
    candidates = []
    if os.environ.get("MLPLAB_PG_BIN"):
        candidates.append(Path(os.environ["MLPLAB_PG_BIN"]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)

    def version(path: str) -> tuple:
        return tuple(int(n) for n in re.findall(r"\d+", path)) or (0,)

    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/opt/postgresql*/bin"):
        candidates += [Path(p) for p in sorted(glob.glob(pattern), key=version, reverse=True)]
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "psql")):
            return folder
    return None


def _unprivileged_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as: None (this user) unless running as root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            if entry.pw_uid != 0:
                return entry.pw_uid, entry.pw_gid
    raise Unavailable("running as root, and neither a 'postgres' nor a 'nobody' user exists to run the server as")


def _reachable(folder: Path, uid: int, gid: int) -> bool:
    """Whether user ``uid`` (group ``gid``) can pass through every folder down to ``folder``."""
    for part in [folder, *folder.parents]:
        mode = os.stat(part)
        bits = stat.S_IXOTH
        if mode.st_uid == uid:
            bits = stat.S_IXUSR
        elif mode.st_gid == gid:
            bits = stat.S_IXGRP
        if not mode.st_mode & bits:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path
    port: int
    password: str
    version: str
    user: tuple[int, int] | None = None
    log: Path = field(init=False)

    def __post_init__(self):
        self.log = self.root / "server.log"

    def url(self, driver: str | None = None, *, password: str | None = None, database: str = DATABASE,
            port: int | None = None, role: str = ROLE) -> str:
        scheme = "postgresql" + (f"+{driver}" if driver else "")
        return f"{scheme}://{role}:{password or self.password}@127.0.0.1:{port or self.port}/{database}"

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """One of the server's programs, as the server's user, in the server's folder."""
        return _run(self.bin_dir, self.user, self.root, list(args), check=check, timeout=timeout)

    def sql(self, *statements: str) -> str:
        """Run statements as the superuser (through the socket); return psql's output."""
        commands = [part for statement in statements for part in ("-c", statement)]
        return self.run("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.root), "-p", str(self.port),
                        "-U", ADMIN, "-d", "postgres", *commands).stdout

    def stop(self) -> None:
        """Stop the server (fast shutdown; killed if that fails) and delete its folder."""
        try:
            result = self.run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "-t", "30", "stop", check=False)
            if result.returncode != 0:
                _kill_postmaster(self.root / "data")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _environment() -> dict:
    # The caller's PG* variables (a PGHOST, a PGDATA) must not redirect the throwaway cluster.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    return env


def _run(bin_dir: Path, user, cwd: Path, args: list[str], *, check: bool, timeout: float) -> subprocess.CompletedProcess:
    command = [str(bin_dir / args[0]), *args[1:]]
    identity = {} if user is None else {"user": user[0], "group": user[1], "extra_groups": []}
    try:
        result = subprocess.run(command, check=False, cwd=cwd, env=_environment(), capture_output=True, text=True, timeout=timeout,
                                **identity)
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"{args[0]} could not run: {exc}") from None
    if check and result.returncode != 0:
        raise Unavailable(f"{args[0]} failed ({result.returncode}): {(result.stderr or result.stdout).strip()[-800:]}")
    return result


def _kill_postmaster(data: Path) -> None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGKILL)


def _make_root(user) -> Path:
    """A fresh folder the server's user owns and can reach."""
    for parent in dict.fromkeys([tempfile.gettempdir(), "/tmp", "/var/tmp"]):
        parent = Path(parent)
        if not parent.is_dir() or (user is not None and not _reachable(parent, *user)):
            continue
        root = Path(tempfile.mkdtemp(prefix="mlplab-pg-", dir=parent))
        if user is not None:
            os.chown(root, *user)
        return root
    raise Unavailable("no temporary folder that the server's user can reach")


def start(bin_dir: Path | None = None) -> PostgresServer:
    """Start a server with role ``sweeper`` (a random password) owning database ``sweeps``.
    Raises :class:`Unavailable` with the reason when that is not possible here."""
    bin_dir = bin_dir or find_bin_dir()
    if bin_dir is None:
        raise Unavailable("no PostgreSQL server programs (initdb, pg_ctl) on the PATH or in /usr/lib/postgresql/*/bin; "
                          "install Debian's postgresql package")
    user = _unprivileged_user()
    root = _make_root(user)
    server = None
    try:
        version = _run(bin_dir, user, root, ["initdb", "--version"], check=True, timeout=30).stdout.strip()
        _run(bin_dir, user, root, ["initdb", "-D", str(root / "data"), "-U", ADMIN, "--auth-local=trust",
                                   "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"], check=True, timeout=120)
        for attempt in range(3):  # the free port may be taken between choosing and listening
            port = _free_port()
            options = " ".join(["-h", "127.0.0.1", "-p", str(port), "-k", str(root), *FAST])
            result = _run(bin_dir, user, root, ["pg_ctl", "-D", str(root / "data"), "-l", str(root / "server.log"),
                                                "-o", options, "-w", "-t", "60", "start"], check=False, timeout=90)
            if result.returncode == 0:
                break
            _kill_postmaster(root / "data")
            time.sleep(0.2)
        else:
            log = (root / "server.log").read_text(errors="replace").strip()[-800:] if (root / "server.log").exists() else ""
            raise Unavailable(f"pg_ctl start failed: {(result.stderr or result.stdout).strip()[-400:]} {log}")
        server = PostgresServer(bin_dir, root, port, secrets.token_hex(12), version, user)
        server.sql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{server.password}'", f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
        return server
    except BaseException:
        if server is not None:
            server.stop()
        else:
            _kill_postmaster(root / "data")
            shutil.rmtree(root, ignore_errors=True)
        raise
