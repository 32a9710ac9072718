"""Running the sandbox: ``run`` (foreground, for the CLI) and ``start_in_thread`` (tests, demo, bench)."""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from sandbox.app import create_app
from sandbox.control import apply_config
from sandbox.faults import rules_from_payload
from sandbox.state import SandboxState

logger = logging.getLogger(__name__)


@dataclass
class RunningServer:
    """An ASGI app served by uvicorn in a daemon thread."""

    url: str
    port: int
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self, *, timeout: float = 5.0) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class RunningSandbox(RunningServer):
    """The sandbox running in a thread: ``url``, ``state`` (the live state), ``app``, ``stop()``."""

    state: SandboxState | None = None
    app: Any = None


def start_app_in_thread(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 10.0
) -> RunningServer:
    """Serve any ASGI app with uvicorn in a daemon thread; port 0 picks a free one."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=30
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{host}:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"server on {host}:{port} did not start")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return RunningServer(url=f"http://{host}:{bound}", port=bound, server=server, thread=thread)


def start_in_thread(
    *, host: str = "127.0.0.1", port: int = 0, state: SandboxState | None = None, seed: int = 0
) -> RunningSandbox:
    """Start the sandbox in a thread (for tests and the demo)."""
    app = create_app(state=state, seed=seed)
    running = start_app_in_thread(app, host=host, port=port)
    return RunningSandbox(
        url=running.url,
        port=running.port,
        server=running.server,
        thread=running.thread,
        state=app.state.sandbox,
        app=app,
    )


def load_config_file(state: SandboxState, path: Path) -> None:
    """Apply a YAML or JSON configuration file (the body of ``PUT /sandbox/config``, plus ``faults``)."""
    raw_text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(raw_text) or {}
    else:
        data = json.loads(raw_text)
    apply_config(state, data)
    if data.get("faults"):
        rules, seed = rules_from_payload(data["faults"])
        state.faults.set_rules(rules=rules, seed=seed)


def run(
    *, host: str = "127.0.0.1", port: int = 8085, seed: int = 0, config_file: str | Path | None = None
) -> None:
    """Serve the sandbox in the foreground until interrupted."""
    state = SandboxState(seed=seed)
    if config_file:
        load_config_file(state, Path(config_file))
    app = create_app(state=state)
    logger.info("pagoPA sandbox on http://%s:%s (seed %s)", host, port, seed)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, timeout_keep_alive=30)


def main(argv: list[str] | None = None) -> None:
    """``python -m sandbox.server [--host] [--port] [--seed] [--config FILE]``."""
    parser = argparse.ArgumentParser(description="Run the local pagoPA sandbox.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8085)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default=None, help="YAML or JSON configuration file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    run(host=args.host, port=args.port, seed=args.seed, config_file=args.config)


if __name__ == "__main__":
    main()
