"""A serving engine behind SoLA's router: vLLM's OpenAI-compatible server, started and supervised by `sola serve
--engine vllm` (from the environment `make engine-vllm` creates) or reached at `--engine-url URL`.

SoLA decides, once per question and from its prompt alone, which edit answers (`Editor.explain`); the engine then
generates with that edit's LoRA adapter (vLLM's `model` = the edit id) or with the base model. The prompt goes to the
engine as the token ids the editor would feed its own model, and the answer is cut at its first line as the editor
cuts it, so greedy answers are the editor's token for token. Adapters are exported from the store (PEFT format,
`Editor.export_peft`) and loaded at run time (`/v1/load_lora_adapter`): when an edit commits, or when a question
first routes to an edit another process made; a rollback unloads its adapter before it returns.

Standard library only (urllib): the engine is a separate process with its own environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SolaError

BASE = "sola-base"  # the base model's name in the engine
ENGINE_ENV = ".venv-vllm"  # what `make engine-vllm` creates in the repository


class EngineError(SolaError):
    """The engine refused a request or could not be reached (the message says which, and what it answered)."""


class VllmEngine:
    """A running vLLM OpenAI-compatible server: adapters loaded by name, completions from token ids."""

    def __init__(self, url: str, *, process: subprocess.Popen | None = None) -> None:
        self.url, self.process = url.rstrip("/"), process
        self.loaded: set[str] = set()

    # -- starting ----------------------------------------------------------------------------------------------------
    @classmethod
    def start(cls, model_dir: str | os.PathLike, *, port: int, max_lora_rank: int, python: str | None = None,
              max_loras: int = 4, kv_cache_gib: int = 2, timeout: float = 600, log=print) -> VllmEngine:
        """Start vLLM on `model_dir` (float32, LoRA enabled, adapters loadable at run time) and wait until it
        answers; its output goes to `vllm.log` in the working directory's `.sola-engine/`."""
        python = python or find_engine_python()
        logs = Path(".sola-engine")
        logs.mkdir(exist_ok=True)
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib)}
        command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                   "--served-model-name", BASE, "--dtype", "float32", "--enable-lora",
                   "--max-lora-rank", str(max_lora_rank), "--max-loras", str(max_loras), "--max-model-len", "1024",
                   "--host", "127.0.0.1", "--port", str(port)]
        log(f"starting vLLM: {' '.join(command)}")
        with open(logs / "vllm.log", "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        engine = cls(f"http://127.0.0.1:{port}", process=process)
        deadline = time.monotonic() + timeout
        while not engine.ready():
            if process.poll() is not None:
                raise EngineError(f"vLLM exited with code {process.returncode} while starting; its output is in "
                                  f"{logs / 'vllm.log'}")
            if time.monotonic() > deadline:
                engine.stop()
                raise EngineError(f"vLLM did not answer within {timeout:.0f} s; its output is in {logs / 'vllm.log'}")
            time.sleep(1)
        log(f"vLLM is ready at {engine.url}")
        return engine

    def ready(self) -> bool:
        try:
            self._call("GET", "/v1/models", timeout=2)
            return True
        except EngineError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    # -- adapters ----------------------------------------------------------------------------------------------------
    def load(self, name: str, directory: str | os.PathLike) -> None:
        if name not in self.loaded:
            self._call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(directory)})
            self.loaded.add(name)

    def unload(self, name: str) -> None:
        if name in self.loaded:
            self.loaded.discard(name)
            self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name})

    # -- answering ---------------------------------------------------------------------------------------------------
    def complete(self, token_ids: list[int], max_tokens: int, adapter: str | None,
                 stop_at_newline: bool = False) -> str:
        """Greedy completion of these prompt tokens with the adapter (None: the base model). With `stop_at_newline`
        the engine stops at a line break, and, where that left no text (the answer began with one), generates again
        without stopping: then `Task.cut_answer` gives the editor's first line either way."""
        body = {"model": adapter or BASE, "prompt": token_ids, "max_tokens": max_tokens, "temperature": 0.0,
                "skip_special_tokens": True}
        if stop_at_newline:
            text = self._call("POST", "/v1/completions", {**body, "stop": ["\n"]})["choices"][0]["text"]
            if text.strip():
                return text
        return self._call("POST", "/v1/completions", body)["choices"][0]["text"]

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float = 600) -> Any:
        request = urllib.request.Request(self.url + path, method=method, headers={"Content-Type": "application/json"},
                                         data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raise EngineError(f"vLLM refused {method} {path}: {error.code} {error.read()[:500]!r}") from None
        except (urllib.error.URLError, OSError) as error:
            raise EngineError(f"vLLM at {self.url} cannot be reached ({error})") from None
        try:
            return json.loads(raw) if raw.strip().startswith((b"{", b"[")) else raw.decode()
        except ValueError:
            return raw.decode(errors="replace")


def find_engine_python() -> str:
    """The Python of the engine's environment: $SOLA_VLLM_PYTHON, else `.venv-vllm` here or beside this package."""
    if os.environ.get("SOLA_VLLM_PYTHON"):
        given = os.environ["SOLA_VLLM_PYTHON"]
        if not (Path(given).is_file() or shutil.which(given)):
            raise ConfigError(f"SOLA_VLLM_PYTHON={given} is not a Python here; point it at the python of an "
                              "environment with vLLM, or unset it to use .venv-vllm (`make engine-vllm`)")
        return given
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = root / ENGINE_ENV / "bin" / "python"
        if candidate.is_file():
            return str(candidate)
    raise ConfigError("vLLM is not installed: run `make engine-vllm` in the repository (it creates .venv-vllm with "
                      "vLLM's CPU build, about 3.5 GB), or set SOLA_VLLM_PYTHON to a Python that has vLLM, or give "
                      "--engine-url URL of a vLLM server started with --enable-lora and "
                      "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True")


def engine_python_exists() -> bool:
    try:
        find_engine_python()
        return True
    except ConfigError:
        return False


class Adapters:
    """The engine's adapters kept in step with the store: an edit's adapter is exported (from the store, by the
    editor at hand) and loaded when it commits or when a question first routes to it; unloaded when it is rolled back
    or superseded."""

    def __init__(self, engine: VllmEngine, directory: str | os.PathLike) -> None:
        self.engine, self.directory = engine, Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # adapter names are the edit ids behind a prefix of this directory: two stores on one engine never share one
        self.prefix = hashlib.sha1(str(self.directory.resolve()).encode()).hexdigest()[:8] + "-"

    def name(self, edit_id: str) -> str:
        return self.prefix + edit_id

    def ensure(self, editor, edit_id: str) -> str:
        """The adapter of a live edit, loaded; -> its name in the engine."""
        from ..adapters import WEIGHTS

        name = self.name(edit_id)
        if name not in self.engine.loaded:
            target = self.directory / edit_id
            if not (target / WEIGHTS).is_file():
                editor.export_peft(edit_id, target)
            self.engine.load(name, target)
        return name

    def committed(self, editor, kind: str, result) -> None:
        """After a job of the writer `editor`: load new edits, unload the ones they replace or that were undone."""
        if kind == "edit":
            for edit in result:
                if not edit.id or not edit.live:  # refused (did not converge): nothing to serve
                    continue
                self.ensure(editor, edit.id)
                if edit.supersedes:
                    self.drop(edit.supersedes)
        elif kind == "rollback":
            self.drop(result.id)

    def drop(self, edit_id: str) -> None:
        self.engine.unload(self.name(edit_id))
        shutil.rmtree(self.directory / edit_id, ignore_errors=True)
