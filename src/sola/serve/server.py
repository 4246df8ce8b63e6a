"""Starting `sola serve`: the editors on the store, the token, the checks before binding, uvicorn."""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import socket
import sys
import threading
from pathlib import Path

from ..errors import ConfigError
from .discovery import announced
from .service import EditService


def read_or_create_token(path: str | os.PathLike) -> tuple[str, bool]:
    """The bearer token in `path`, or a new random one written there with mode 0600; -> (token, created)."""
    path = Path(path)
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"the token file {path} can be read by other users; run `chmod 600 {path}`")
        token = path.read_text().strip()
        if len(token) < 16:
            raise ConfigError(f"the token in {path} is shorter than 16 characters; delete the file to get a new one")
        return token, False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token, True


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except (socket.gaierror, ValueError):
            return False


def open_service(store: str | os.PathLike, model: str | None = None, *, single_model: bool = False,
                 engine: str | None = None, engine_url: str | None = None, engine_port: int = 8100,
                 log=print) -> EditService:
    """A writer and (unless `single_model`) a reader editor on the store, created if it does not exist; with
    `engine="vllm"` (started here) or `engine_url` (running elsewhere), answers come from that engine."""
    from ..editor import Editor

    writer = Editor.from_pretrained(model, store=store)
    adapters = _engine_adapters(writer, store, engine, engine_url, engine_port, log) if engine or engine_url else None
    reader = writer if single_model else Editor.from_pretrained(model, store=store, create=False)
    reader.table.prepare_search()  # a large store's first ask would compute the key search's codes (seconds)
    return EditService(reader, writer, adapters=adapters)


def _engine_adapters(editor, store, engine: str | None, url: str | None, port: int, log):
    from ..adapters import adapter_config
    from ..home import sola_home
    from .discovery import serving_file
    from .engine import Adapters, VllmEngine

    if url is not None:
        running = VllmEngine(url)
        if not running.ready():
            raise ConfigError(f"no vLLM server answers at {url}; start it with --enable-lora (and "
                              "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), or use --engine vllm to start one here")
    elif engine == "vllm":
        rank = max(8, 1 << (int(editor.config.rank) - 1).bit_length())  # vLLM takes ranks 8, 16, 32, ...
        running = VllmEngine.start(adapter_config(editor)["base_model_name_or_path"], port=port,
                                   max_lora_rank=rank, log=log)
    else:
        raise ConfigError(f"--engine {engine!r} is not an engine this server knows; the engine is vllm")
    return Adapters(running, sola_home() / "engine-adapters" / serving_file(store).stem)


def serve(store: str | os.PathLike, model: str | None = None, *, host: str = "127.0.0.1", port: int = 8000,
          token_file: str | os.PathLike | None = None, read_token: bool = False, single_model: bool = False,
          engine: str | None = None, engine_url: str | None = None, engine_port: int = 8100, log=print) -> None:
    from ..loading import sola_home

    if not is_loopback(host) and token_file is None:
        raise ConfigError(f"--host {host} is reachable from other machines: give --token-file FILE (it is created "
                          "with a random token if missing), or bind 127.0.0.1")
    token_path = Path(token_file) if token_file else sola_home() / "serve.token"
    token, created = read_or_create_token(token_path)
    log(f"token file: {token_path} ({'created' if created else 'existing'}; writes need 'Authorization: Bearer' "
        f"and its content{', reads too' if read_token else ''})")
    service = open_service(store, model, single_model=single_model, engine=engine, engine_url=engine_url,
                           engine_port=engine_port, log=log)
    import uvicorn

    from .app import create_app

    app = create_app(service, token=token, read_token=read_token, model_name=service.reader.source)
    log(f"serving {store} on http://{host}:{port}/ (API docs at /docs)")
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # where a CLI on this machine reaches it
    # uvicorn shuts down on SIGTERM, then raises it again with the handler found at start: make that an exit, so
    # that the announcement below is withdrawn (a stale one is ignored anyway: its process is gone)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        with announced(store, f"http://{local}:{port}", read_token=read_token, token_file=token_path.resolve()):
            uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        if service.adapters is not None:
            service.adapters.engine.stop()  # an engine this server started stops with it
