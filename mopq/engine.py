"""The embedded engine: mongo-java-server started by our Java launcher.

Why: no package registry ships ``mongod``, so the no-configuration default and
the test suite run on mongo-java-server (see ``engine/`` and docs/ENGINE.md).
When ``MOPQ_MONGODB_URI`` is set none of this runs: that server is used.

The jars are fetched by Maven at the version pinned in ``engine/pom.xml`` and,
with the compiled launcher, cached under ``~/.cache/mopq`` (``MOPQ_CACHE_DIR``)
keyed by a hash of the pom and every ``engine/*.java``, so a fresh clone reuses
them and a change to any of them (an edit, a file added or removed) fetches and
compiles again into a folder of its own: stale classes are never run.

Contract of :class:`Engine`: ``start()`` returns once the server answers
``ping``; ``stop()`` ends the JVM (gracefully first, so H2 data is flushed);
the JVM also ends by itself when this process dies, even by SIGKILL, because
it watches its standard input, which only this process holds.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from mopq.config import settings

ENGINE_SOURCE_DIR = Path(__file__).resolve().parent.parent / "engine"
ENGINE_POM = ENGINE_SOURCE_DIR / "pom.xml"
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0


class EngineError(RuntimeError):
    """The embedded engine could not be prepared or started; the message says why."""


def _require_tools() -> None:
    missing = [tool for tool in ("java", "javac", "mvn") if shutil.which(tool) is None]
    if missing:
        raise EngineError(
            "The embedded engine needs Java 17+ (java, javac) and Maven (mvn), but "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on PATH. "
            "Install them (Debian: apt-get install openjdk-17-jdk-headless maven), "
            "or set MOPQ_MONGODB_URI=mongodb://host:27017 to use a MongoDB server instead."
        )


def _engine_home() -> Path:
    digest = hashlib.sha256(ENGINE_POM.read_bytes())
    for source in _java_sources():
        digest.update(source.name.encode() + source.read_bytes())
    return settings().cache_dir / f"engine-{digest.hexdigest()[:16]}"


def _java_sources() -> list[Path]:
    return sorted(ENGINE_SOURCE_DIR.glob("*.java"))


def prepare(verbose: bool = False) -> Path:
    """Fetch the engine's jars and compile the launcher once; return the cache folder.

    Safe to call from several processes at once (a file lock serialises them).
    """
    home = _engine_home()
    ready = home / "ready"
    if ready.exists():
        return home
    _require_tools()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.exists():
            return home
        jars = home / "jars"
        classes = home / "classes"
        out = None if verbose else subprocess.PIPE
        if verbose:
            print(f"mopq: fetching the engine's jars with Maven into {jars}", file=sys.stderr)
        fetch = subprocess.run(
            ["mvn", "-B", "-q", "-f", str(ENGINE_POM),
             "dependency:copy-dependencies", f"-DoutputDirectory={jars}"],
            stdout=out, stderr=subprocess.STDOUT, text=True,
        )
        if fetch.returncode != 0:
            raise EngineError(
                "Maven could not fetch the engine's jars (mongo-java-server from Maven "
                f"Central). Its output:\n{fetch.stdout or ''}\nCheck network access to Maven "
                "Central, or set MOPQ_MONGODB_URI to use a MongoDB server instead."
            )
        compiled = subprocess.run(
            ["javac", "-d", str(classes), "-cp", f"{jars}/*", *map(str, _java_sources())],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        if compiled.returncode != 0:
            raise EngineError(f"javac could not compile the engine launcher:\n{compiled.stdout}")
        ready.write_text("ok\n")
    return home


def java_command(port: int = 0, data: str | os.PathLike | None = None,
                 host: str = "127.0.0.1", watch_stdin: bool = False) -> list[str]:
    """The command line that runs the engine (after :func:`prepare`)."""
    home = prepare()
    classpath = f"{home / 'classes'}:{home / 'jars'}/*"
    command = ["java", "-XX:+UseSerialGC", "-cp", classpath, "Launcher",
               "--host", host, "--port", str(port)]
    if data is not None:
        command += ["--data", str(data)]
    if watch_stdin:
        command.append("--watch-stdin")
    return command


class Engine:
    """One embedded engine process, owned by this Python process."""

    def __init__(self, port: int = 0, data: str | os.PathLike | None = None,
                 host: str = "127.0.0.1", env: dict[str, str] | None = None) -> None:
        self.port = port
        self.data = data
        self.host = host
        # Added to this process's environment for the JVM only (e.g. MOPQ_ENGINE_PLAIN_INDEXES).
        self.env = env
        self.uri: str | None = None
        self._process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> str:
        """Start the JVM, wait until it answers ``ping``, return its URI."""
        command = java_command(self.port, self.data, self.host, watch_stdin=True)
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            start_new_session=True, env={**os.environ, **self.env} if self.env else None,
        )
        atexit.register(self.stop)
        first_line = _read_line_with_timeout(self._process, timeout)
        if not first_line.startswith("mongodb://"):
            code = self._process.poll()
            self.stop()
            raise EngineError(
                f"The embedded engine did not start (exit code {code}, said {first_line!r}). "
                f"Is port {self.port} already in use? Run `mopq engine --port {self.port}` "
                "to see its own error."
            )
        self.uri = first_line.strip()
        threading.Thread(target=self._drain_stdout, daemon=True).start()
        wait_for_ping(self.uri, timeout)
        return self.uri

    def _drain_stdout(self) -> None:
        process = self._process
        if process is not None and process.stdout is not None:
            with contextlib.suppress(ValueError, OSError):
                for _ in process.stdout:
                    pass

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stop gracefully (SIGTERM runs the JVM's shutdown hook), then kill if it hangs."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ValueError):
            atexit.unregister(self.stop)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def engine_unless_configured(data: str | os.PathLike | None = None
                             ) -> Iterator[tuple[str, bool]]:
    """``MOPQ_MONGODB_URI`` if set, else an embedded engine started for this block.

    Yields the URI and whether it is the embedded engine, which stops when the
    block ends (benches, screenshots and the test suite use this). With
    ``data`` the embedded engine keeps durable H2 storage in that folder, as
    ``make run`` does; otherwise memory.
    """
    configured = settings().mongodb_uri
    if configured:
        yield configured, False
        return
    engine = Engine(data=data)
    uri = engine.start()
    try:
        yield uri, True
    finally:
        engine.stop()


def _read_line_with_timeout(process: subprocess.Popen[str], timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(
        target=lambda: result.append(process.stdout.readline() if process.stdout else ""),
        daemon=True,
    )
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        process.kill()
        raise EngineError(f"The embedded engine did not print its URI within {timeout:.0f} s.")
    return result[0] if result else ""


def wait_for_ping(uri: str, timeout: float = START_TIMEOUT_SECONDS) -> None:
    """Poll ``ping`` until the server answers or the deadline passes."""
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        client = MongoClient(uri, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000)
        try:
            client.admin.command("ping")
            return
        except PyMongoError as error:
            last_error = error
            time.sleep(0.1)
        finally:
            client.close()
    raise EngineError(f"No answer to ping from {uri} within {timeout:.0f} s: {last_error}")


def run_foreground(port: int = 0, data: str | None = None, host: str = "127.0.0.1") -> int:
    """``mopq engine``: replace this process with the JVM, whose first line is the URI."""
    command = java_command(port, data, host)
    sys.stdout.flush()
    os.execvp(command[0], command)
    return 0  # not reached
