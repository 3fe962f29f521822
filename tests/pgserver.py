"""A throwaway PostgreSQL server for the tests, and a fresh database per test.

`PostgresServer` runs `initdb` into a temporary directory and `pg_ctl start`
on a free loopback port, tuned for speed rather than durability (fsync off).
The fixtures `postgres_server` (one per session) and `postgres_url` (a new
database per test, dropped after it) are meant to be imported by conftest.py.

Without an installed PostgreSQL the tests that use them are skipped with the
reason; with REQUIRE_POSTGRES=1 (CI) that is a failure instead.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import pytest

SUPERUSER = "postgres"
# PostgreSQL refuses to run as root; as root, its programs run as this user.
SERVER_OS_USER = "postgres"

# Throwaway data: durability is traded for speed. wal_level=minimal needs
# max_wal_senders=0. Autovacuum would wake for every database the tests make,
# on a 2-core machine, for tables that live a few seconds.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "shared_buffers": "16MB",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "autovacuum": "off",
    "jit": "off",
    # Dynamic shared memory as files in the data directory rather than in
    # /dev/shm: a postmaster killed by SIGKILL leaves its segments, and these
    # go with the directory.
    "dynamic_shared_memory_type": "mmap",
}

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20
CLIENT_TIMEOUT_S = 30
PORT_TRIES = 5


class PostgresError(RuntimeError):
    """A PostgreSQL program failed or timed out; the message has the server log's tail."""


def pg_binaries() -> Path | None:
    """The bin directory of an installed PostgreSQL server, or None.

    `pg_config --bindir` first; Debian's pg_config may come from libpq-dev
    alone, so a bindir without the server programs does not count. Then the
    newest /usr/lib/postgresql/*/bin (Debian's layout, not on PATH).
    """
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            bindir = Path(done.stdout.strip())
            if _has_server(bindir):
                return bindir
    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version, reverse=True):
        if _has_server(bindir):
            return bindir
    return None


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def _version(bindir: Path) -> tuple[int, ...]:
    """(15,) for /usr/lib/postgresql/15/bin, so that 10 sorts after 9.6."""
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name)) or (-1,)


def unavailable_reason() -> str | None:
    """Why no throwaway PostgreSQL server can run here, or None if one can."""
    if pg_binaries() is None:
        return (
            "PostgreSQL is not installed (no initdb under `pg_config --bindir` nor under "
            "/usr/lib/postgresql/*/bin; apt-get install postgresql)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_OS_USER)
        except KeyError:
            return f"running as root, and there is no `{SERVER_OS_USER}` user to run PostgreSQL as"
    return None


def require_postgres() -> None:
    """Skip the test without PostgreSQL, or fail it when REQUIRE_POSTGRES=1 (CI)."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("REQUIRE_POSTGRES") == "1" or os.environ.get("REQUIRE_REAL_PARTS") == "1":
        pytest.fail(f"REQUIRE_REAL_PARTS=1, but {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def quote_ident(name: str) -> str:
    """`name` as an SQL identifier, for psql (psycopg has its own)."""
    return '"' + name.replace('"', '""') + '"'


def _default_base_dir() -> Path:
    """/dev/shm when it is a roomy tmpfs (no disk writes at all), else the temp dir.

    Each database is about 8 MB; a container's default 64 MB /dev/shm would
    run out, so it is used only with a few GiB free.
    """
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 4 << 30:
            return shm
    return Path(tempfile.gettempdir())


class PostgresServer:
    """A throwaway PostgreSQL cluster on a loopback port, for tests.

    `start()` makes the cluster (the first time) and starts it; `kill()` stops
    it but keeps its data, and `start()` or `restart()` brings it back on the
    same port, as a database restart under a running service looks; `stop()`
    stops it at once and removes everything. Also a context manager.
    """

    def __init__(self, bindir: Path | None = None, base_dir: Path | None = None) -> None:
        found = bindir or pg_binaries()
        if found is None:
            raise PostgresError(unavailable_reason() or "PostgreSQL is not installed")
        self.bindir = found
        self.base_dir = base_dir
        self.root: Path | None = None
        self.port: int | None = None
        # As root, the server programs run as SERVER_OS_USER (PostgreSQL
        # refuses root). subprocess switches user itself: no runuser/su/PAM.
        self._os_user = pwd.getpwnam(SERVER_OS_USER) if os.geteuid() == 0 else None

    # -- paths -----------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._root() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._root() / "run"

    @property
    def log_path(self) -> Path:
        return self._root() / "server.log"

    def _port(self) -> int:
        if self.port is None:
            raise PostgresError("the server has not been started")
        return self.port

    def _root(self) -> Path:
        if self.root is None:
            raise PostgresError("the server has not been started")
        return self.root

    # -- life cycle --------------------------------------------------------------

    def start(self) -> PostgresServer:
        """Make the cluster if there is none yet, and start it (no-op if running)."""
        if self.root is not None:
            if not self.running():
                # Back on the same port: the service under test has it in its URL.
                self._start_on(self._port())
            return self
        try:
            self._init()
            for _ in range(PORT_TRIES):
                # A free port can be taken between finding and binding it.
                if self._start_on(free_port(), port_taken_ok=True):
                    return self
            raise PostgresError(f"no free port after {PORT_TRIES} tries\n{self.log_tail()}")
        except BaseException:
            # A first start that failed leaves nothing behind; the error has the log.
            self.stop()
            raise

    def kill(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop the server (`pg_ctl stop -m mode`) but keep its data and port for `start()`."""
        if self.running():
            self._pg_ctl("stop", "-m", mode, "-w", "-t", str(STOP_TIMEOUT_S))

    def restart(self) -> None:
        """Stop the server (fast) and start it again on the same port with the same data."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Stop the server at once (bounded; SIGKILL if need be) and remove its directory."""
        if self.root is None:
            return
        try:
            if self.running():
                try:
                    self._pg_ctl("stop", "-m", "immediate", "-w", "-t", str(STOP_TIMEOUT_S))
                except PostgresError:
                    self._kill_postmaster()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
            self.port = None
            atexit.unregister(self.stop)

    def running(self) -> bool:
        """Whether the postmaster of this cluster is alive."""
        pid = self._postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A dead postmaster can stay a zombie for a while (PID 1 reaps it).
        return _state(pid) != "Z"

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- clients -----------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        """The URL of database `dbname` on this server, as the superuser (trust auth)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self._port()}/{quote(dbname, safe='')}"

    def create_database(self, name: str) -> str:
        """Create database `name` and return its URL."""
        # FILE_COPY copies template1's files and then checkpoints, which costs
        # little with fsync off; the default since 15, WAL_LOG, writes each
        # page to the WAL as well: 20 ms against 37 ms a database here.
        strategy = " STRATEGY FILE_COPY" if self.version >= 15 else ""
        self.execute(f"CREATE DATABASE {quote_ident(name)}{strategy}")
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop database `name`, ending its sessions (a test may leave a pool open)."""
        self.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")

    def execute(self, statement: str) -> None:
        """Run one statement as the superuser in database `postgres`, outside a transaction.

        Through psycopg when it is installed (no process to start), else psql.
        Both are bounded: a connect timeout and a statement timeout.
        """
        try:
            import psycopg
        except ImportError:
            self._psql(statement)
            return
        try:
            with psycopg.connect(
                self.dsn(),
                autocommit=True,
                connect_timeout=CLIENT_TIMEOUT_S,
                options=f"-c statement_timeout={CLIENT_TIMEOUT_S}s",
            ) as conn:
                conn.execute(statement.encode())
        except psycopg.Error as exc:
            raise PostgresError(f"{statement}: {exc}\n{self.log_tail()}") from exc

    def _psql(self, statement: str) -> None:
        psql = self.bindir / "psql"
        env = {
            **_clean_env(),
            "PGCONNECT_TIMEOUT": str(CLIENT_TIMEOUT_S),
            "PGOPTIONS": f"-c statement_timeout={CLIENT_TIMEOUT_S}s",
        }
        command = [str(psql if psql.exists() else "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        command += ["-d", self.dsn(), "-c", statement]
        self._run(command, timeout_s=CLIENT_TIMEOUT_S + 10, env=env, as_server=False)

    @property
    def version(self) -> int:
        """The server's major version (15), from the cluster's PG_VERSION."""
        return int((self.data_dir / "PG_VERSION").read_text().split(".")[0])

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the server log, for error messages."""
        if self.root is None or not self.log_path.exists():
            return "(no server log)"
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "server log tail:\n" + "\n".join(text)

    # -- internals -----------------------------------------------------------------

    def _init(self) -> None:
        base = self.base_dir or _default_base_dir()
        root = Path(tempfile.mkdtemp(prefix="pgserver-", dir=base))
        self.root = root
        # Registered before initdb, so a failure midway still removes the directory.
        atexit.register(self.stop)
        if self._os_user is not None:
            os.chown(root, self._os_user.pw_uid, self._os_user.pw_gid)
            self._check_reachable(root)
        self._mkdir(self.socket_dir)
        self._run(
            [
                *(str(self.bindir / "initdb"), "-D", str(self.data_dir)),
                *("-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C"),
                # No fsync of the new files: they are thrown away anyway.
                *("--no-sync", "--no-instructions"),
            ],
            timeout_s=120,
            # The cluster's time zone is UTC whatever the machine's.
            env={**_clean_env(), "TZ": "UTC"},
        )
        settings = {**SETTINGS, "unix_socket_directories": f"'{self.socket_dir}'"}
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/pgserver.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _start_on(self, port: int, port_taken_ok: bool = False) -> bool:
        """Start on `port`; False if the port was taken and `port_taken_ok`."""
        self.port = port
        # The port goes in postgresql.conf (last setting wins), not in
        # `pg_ctl -o`, which a shell splits: a plain `pg_ctl start` reuses it.
        conf = self.data_dir / "postgresql.conf"
        lines = [line for line in conf.read_text().splitlines() if not line.startswith("port =")]
        conf.write_text("\n".join([*lines, f"port = {port}", ""]))
        self._remove_stale_locks(port)
        log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            self._pg_ctl("start", "-w", "-t", str(START_TIMEOUT_S), "-l", str(self.log_path))
        except PostgresError:
            with self.log_path.open("rb") as log:
                log.seek(log_size)
                new = log.read().decode(errors="replace")
            if port_taken_ok and "could not bind" in new and not self.running():
                self.port = None
                return False
            raise
        return True

    def _pg_ctl(self, *args: str) -> None:
        self._run(
            [str(self.bindir / "pg_ctl"), *args, "-D", str(self.data_dir), "-s"],
            timeout_s=START_TIMEOUT_S + 15,
            env=_clean_env(),
        )

    def _postmaster_pid(self) -> int | None:
        if self.root is None:
            return None
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def _remove_stale_locks(self, port: int) -> None:
        """Remove the lock files of a postmaster that died without removing them.

        A SIGKILLed postmaster leaves them, and while it is an unreaped zombie
        its pid still exists, so a new postmaster would take it as running.
        """
        if not self.running():
            for lock in (
                self.data_dir / "postmaster.pid",
                self.socket_dir / f".s.PGSQL.{port}.lock",
            ):
                lock.unlink(missing_ok=True)

    def _kill_postmaster(self) -> None:
        """SIGKILL the postmaster and its children (each in a session of its own)."""
        pid = self._postmaster_pid()
        if pid is None:
            return
        # Listed first: once the postmaster is gone they belong to PID 1.
        children = _children(pid)
        for each in (pid, *children):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(each, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _mkdir(self, path: Path) -> None:
        path.mkdir(mode=0o700)
        if self._os_user is not None:
            os.chown(path, self._os_user.pw_uid, self._os_user.pw_gid)

    def _check_reachable(self, root: Path) -> None:
        """Fail clearly when SERVER_OS_USER cannot reach `root` (pytest's tmp_path is 0700)."""
        for parent in root.parents:
            if not parent.stat().st_mode & stat.S_IXOTH:
                raise PostgresError(
                    f"{parent} is not searchable by others, so the `{SERVER_OS_USER}` user "
                    f"cannot reach {root}; pass another base_dir"
                )

    def _run(
        self,
        command: Sequence[str],
        timeout_s: float,
        env: dict[str, str],
        as_server: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run `command` bounded; as SERVER_OS_USER when root and `as_server`."""
        user: dict[str, Any] = {}
        if as_server and self._os_user is not None:
            name, gid = self._os_user.pw_name, self._os_user.pw_gid
            user = {
                "user": self._os_user.pw_uid,
                "group": gid,
                # Else the child keeps root's supplementary groups.
                "extra_groups": os.getgrouplist(name, gid),
            }
            env = {**env, "HOME": str(self._root()), "USER": name, "LOGNAME": name}
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                check=False,
                **user,
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresError(
                f"{' '.join(command)}: no answer in {timeout_s}s\n{self.log_tail()}"
            ) from exc
        if done.returncode != 0:
            raise PostgresError(
                f"{' '.join(command)} exited {done.returncode}:\n"
                f"{done.stdout}{done.stderr}\n{self.log_tail()}"
            )
        return done


def _state(pid: int) -> str:
    """The process's state letter from /proc ("Z": zombie), or "" without /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _children(pid: int) -> list[int]:
    """The pids whose parent is `pid`, from /proc (none without /proc)."""
    children = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat_file.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat_file.parent.name))
    return children


def _clean_env() -> dict[str, str]:
    """This environment without PG* variables (PGDATA, PGPORT, ... would steer the tools).

    LC_ALL=C: the messages matched here ("could not bind") are the English ones.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    return {**env, "LC_ALL": "C"}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (skipped, or failed with REQUIRE_POSTGRES=1, without one)."""
    require_postgres()
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database for this test, dropped after it."""
    name = f"test_{uuid.uuid4().hex}"
    url = postgres_server.create_database(name)
    yield url
    # A test that stopped the server and did not start it again leaves it
    # stopped; the next test gets a running one.
    if not postgres_server.running():
        postgres_server.start()
    postgres_server.drop_database(name)
