"""Several broker processes on one host: a supervisor and its workers (`workers: N` in broker.yaml).

The supervisor checks the deployment once, settles the data port (a fixed one, or a free one
when the configuration says 0), starts N worker processes and then only watches them: it holds
the deployment's run file, forwards SIGTERM/SIGINT and SIGHUP (reload), and when any worker ends
it stops the others and exits, so a service manager sees one unit that is either whole or gone. It never serves a request and never opens
the audit log or the token store.

Each worker is a whole broker (`RunningBroker`) with its own audit log, as broker
`<broker_id>-<n>`, its own admin port (admin port + n) and its own listening socket on the shared
data port (SO_REUSEPORT, so the kernel spreads connections among the workers). Tokens are shared
through Redis, which the configuration requires when workers > 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from ztb.config import ConfigError, load_broker_config, load_registry
from ztb.control import RunFile
from ztb.runtime import say

STOP_GRACE_S = 15.0  # a worker drains for up to 10 s; past this it is killed


def supervise(deployment: Path) -> int:
    """Run the workers of `deployment` until a signal or until one of them ends; the exit code."""
    config = load_broker_config(deployment)
    load_registry(deployment)  # a bad registry is refused once, here, not N times
    with RunFile.claim(deployment) as run_file, _reserve(config.listen.host, config.listen.port) as reserved:
        port = int(reserved.getsockname()[1])
        # `ztb reload` signals this process and reads the outcome from worker 0's admin plane.
        run_file.write(port, f"{config.admin.host}:{config.admin.port}")
        workers = [
            # Our own interpreter and module with our own arguments: no shell, no outside input.
            subprocess.Popen([sys.executable, "-m", "ztb.workers", str(deployment), str(n), str(port)])  # noqa: S603
            for n in range(config.workers)
        ]
        say(
            f"ztb: supervisor started {config.workers} workers of {config.broker_id} on "
            f"https://{config.listen.host}:{port}"
        )
        stopping = False
        signalled: set[int] = set()

        def stop(signum: int, frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True
            _signal_all(workers, signalled)

        def reload(signum: int, frame: FrameType | None) -> None:
            for worker in workers:  # each worker reloads the same files and keeps its last good registry
                if worker.poll() is None:
                    worker.send_signal(signal.SIGHUP)

        previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)
        try:
            while all(worker.poll() is None for worker in workers):
                time.sleep(0.1)
            _signal_all(workers, signalled)
            codes = [_wait_or_kill(worker) for worker in workers]
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    # A worker asked to stop before it could handle the signal ends by it: that is a clean stop too.
    if stopping and all(code in (0, -signal.SIGTERM) for code in codes):
        say("ztb: all workers stopped")
        return 0
    say(f"ztb: error: a worker ended (exit codes {codes}); all workers stopped", sys.stderr)
    return 1


def _reserve(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to the data port with SO_REUSEPORT, held while the workers
    run: it fixes the port when the configuration says 0, and receives no connections."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"listen: cannot bind {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _signal_all(workers: list[subprocess.Popen[bytes]], signalled: set[int]) -> None:
    """SIGTERM to each worker still running, once: a second one could land after the worker put
    its handler away on its way out, and kill it mid-stop."""
    for worker in workers:
        if worker.pid not in signalled and worker.poll() is None:
            signalled.add(worker.pid)
            worker.send_signal(signal.SIGTERM)


def _wait_or_kill(worker: subprocess.Popen[bytes]) -> int:
    try:
        return worker.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        worker.kill()
        return worker.wait()


def _worker(deployment: Path, worker: int, port: int) -> int:
    from ztb.runtime import serve_forever

    try:
        clean = asyncio.run(serve_forever(deployment, worker=worker, port=port))
    except ConfigError as exc:
        say(f"ztb: error: worker {worker}: {exc}", sys.stderr)
        return 1
    except OSError as exc:
        say(f"ztb: error: worker {worker}: {exc.strerror or exc}", sys.stderr)
        return 1
    return 0 if clean else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(_worker(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
