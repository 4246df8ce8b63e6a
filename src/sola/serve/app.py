"""The HTTP API of `sola serve` (FastAPI): edits, asks, rollbacks, jobs and their events, OpenAI-compatible completions,
health and Prometheus metrics, the web page at `/` and an offline API page at `/docs`. Every error is JSON:
{"error", "message"}, or OpenAI's shape on the OpenAI-compatible paths (`sola.serve.openai_compat`)."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    ConfigError,
    InternalError,
    InvalidEditError,
    NotConvergedError,
    ReadOnlyStoreError,
    SolaError,
    StoreBusyError,
    UnknownEditError,
)
from .api_page import api_page
from .metrics import Metrics
from .openai_compat import HTTPError, add_openai_routes, error_body
from .service import KEPT_JOBS, EditService, as_json

STATIC = Path(__file__).parent / "static"
MAX_BODY = 1 << 20  # bytes of a request body
MAX_NEW_TOKENS = 256


def _status(error: SolaError) -> int:
    if isinstance(error, UnknownEditError):
        return 404
    if isinstance(error, NotConvergedError):
        return 422
    if isinstance(error, StoreBusyError):
        return 503
    if isinstance(error, ReadOnlyStoreError):
        return 409
    if isinstance(error, (InvalidEditError, ConfigError)) or type(error) is SolaError:
        return 400
    return 500  # the store is damaged or unwritable: not the request's fault


def create_app(service: EditService, *, token: str, read_token: bool = False, model_name: str = "sola") -> FastAPI:
    """The app over `service`. Writes need `Authorization: Bearer <token>`; with `read_token`, reads too."""
    app = FastAPI(title="sola serve", version="1", description="Reversible lifelong model editing over HTTP: edit a "
                  "fact, ask, see which edit answered, undo it.", docs_url=None, redoc_url=None)
    metrics = Metrics(service)
    app.state.service, app.state.metrics = service, metrics

    # Every ask runs on one thread of its own: torch's intra-op threads belong to the thread that calls it, so asks
    # spread over a pool of threads would leave idle teams spinning beside the working one (asks are serialised anyway)
    # (with an engine, asks only route here and generate there: many at once, so that the engine can batch them)
    asker = ThreadPoolExecutor(max_workers=1 if service.adapters is None else 64, thread_name_prefix="sola-ask")

    async def answer(prompt: str, tokens: int, *, with_base: bool = False, stop_at_newline: bool = True
                     ) -> dict[str, Any]:
        answered = await asyncio.get_running_loop().run_in_executor(
            asker, partial(service.ask, prompt, tokens, with_base=with_base, stop_at_newline=stop_at_newline))
        metrics.asked(answered["route"] is not None)
        return answered

    def authorised(request: Request) -> bool:
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def write_access(request: Request) -> None:
        if not authorised(request):
            raise HTTPError(401, "Unauthorized", "this request changes the store: send the server's token as "
                            "'Authorization: Bearer TOKEN' (it is in the --token-file the server printed at start)")

    def read_access(request: Request) -> None:
        if read_token and not authorised(request):
            raise HTTPError(401, "Unauthorized", "this server protects reads too (--read-token): send "
                            "'Authorization: Bearer TOKEN'")

    def failed(request: Request, status: int, error: str, message: str) -> JSONResponse:
        return JSONResponse(error_body(request.url.path, status, error, message), status_code=status)

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, error: HTTPError):
        return failed(request, error.status, error.error, error.message)

    @app.exception_handler(SolaError)
    async def _sola_error(request: Request, error: SolaError):
        return failed(request, _status(error), type(error).__name__, str(error))

    @app.exception_handler(InternalError)
    async def _internal_error(request: Request, error: InternalError):
        return failed(request, 500, "InternalError", str(error))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):  # a bug: the server's fault, said as such
        return failed(request, 500, "InternalError", f"{type(error).__name__}: {error}")

    @app.exception_handler(StarletteHTTPException)
    async def _no_route(request: Request, error: StarletteHTTPException):  # unknown paths, wrong methods
        names = {404: "NotFound", 405: "MethodNotAllowed"}
        message = {404: f"there is no {request.url.path}; the routes are listed at /docs",
                   405: f"{request.method} is not allowed on {request.url.path}; see /docs"}
        return failed(request, error.status_code, names.get(error.status_code, "HTTPError"),
                      message.get(error.status_code, str(error.detail)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError):
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in error.errors()]
        return failed(request, 400, "InvalidRequest", "; ".join(parts))

    @app.middleware("http")
    async def _limits_and_timing(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return JSONResponse({"error": "PayloadTooLarge", "message": f"a request body may hold at most {MAX_BODY} "
                                 "bytes; send fewer edits per call"}, status_code=413)
        started = time.perf_counter()
        response = await call_next(request)
        metrics.request(request.url.path, response.status_code, time.perf_counter() - started)
        return response

    async def body(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise HTTPError(413, "PayloadTooLarge", f"a request body may hold at most {MAX_BODY} bytes")
        try:
            return json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise HTTPError(400, "InvalidJSON", f"the body is not JSON ({err})") from None

    # -- edits -------------------------------------------------------------------------------------------------------
    @app.post("/v1/edits", dependencies=[Depends(write_access)])
    async def post_edits(request: Request):
        """One edit request {"prompt", "target", "subject"?, "supersedes"?, "new_fact"?} or a list of them. Waits for
        the commit and returns the edits; with "async": true (or ?async=1) returns the job at once."""
        data = await body(request)
        run_async = request.query_params.get("async") in ("1", "true")
        if isinstance(data, dict) and "async" in data:
            data = dict(data)
            run_async = bool(data.pop("async"))
        requests = data if isinstance(data, list) else [data]
        # checked before anything is queued (off the event loop: the check waits for a running ask)
        job = await run_in_threadpool(service.submit_edits, requests)
        if run_async:
            return JSONResponse(_job(job), status_code=202)
        edits = await run_in_threadpool(service.wait, job)
        return {"edits": [e.to_dict() for e in edits], "job": job.id}

    @app.get("/v1/edits", dependencies=[Depends(read_access)])
    def list_edits(history: bool = False, rolled_back: bool = Query(False, alias="all")):
        with service.reading() as editor:
            edits = editor.edits(include_rolled_back=rolled_back)
            out: dict[str, Any] = {"edits": [e.to_dict() for e in edits]}
            if history:
                out["chains"] = [[e.to_dict() for e in editor.chain(e.id)] for e in editor.edits() if e.answering]
        return out

    @app.get("/v1/edits/{edit_id}", dependencies=[Depends(read_access)])
    def get_edit(edit_id: str):
        with service.reading() as editor:
            return {**editor.get(edit_id).to_dict(), "chain": [e.id for e in editor.chain(edit_id)]}

    @app.delete("/v1/edits/{edit_id}", dependencies=[Depends(write_access)])
    def delete_edit(edit_id: str):
        """Roll the edit back exactly (waits for it)."""
        job = service.submit_rollback(edit_id)
        return {"rolled_back": service.wait(job).to_dict(), "job": job.id}

    @app.get("/v1/jobs/{job_id}", dependencies=[Depends(read_access)])
    def get_job(job_id: str):
        return _job(_find_job(job_id))

    @app.get("/v1/jobs/{job_id}/events", dependencies=[Depends(read_access)])
    def job_events(job_id: str):
        """Server-sent events: queued, started, progress (step, loss), result (batches), committed or failed."""
        job = _find_job(job_id)

        def stream():
            for event in job.follow():
                if event is None:
                    yield ": keep-alive\n\n"
                else:
                    yield f"event: {event['event']}\ndata: {json.dumps(event, default=str)}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def _find_job(job_id: str):
        job = service.job(job_id)
        if job is None:
            raise HTTPError(404, "UnknownJob", f"there is no job {job_id!r}; the server keeps its last {KEPT_JOBS} "
                            "finished jobs")
        return job

    # -- asking ------------------------------------------------------------------------------------------------------
    @app.post("/v1/ask", dependencies=[Depends(read_access)])
    async def ask(request: Request):
        """{"prompt", "max_new_tokens"?, "base"?, "stop_at_newline"?} -> the edited answer, the base model's answer
        (unless "base": false), and the route. Answers end at their first line break unless "stop_at_newline": false
        (`sola ask` asks that way, as `Editor.generate` answers)."""
        data = await body(request)
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            raise HTTPError(400, "InvalidRequest", 'give {"prompt": "...", "max_new_tokens": 32}')
        tokens = _tokens(data.get("max_new_tokens", 32), "max_new_tokens")
        flags = {name: data.get(name, True) for name in ("base", "stop_at_newline")}
        if not all(isinstance(v, bool) for v in flags.values()):
            raise HTTPError(400, "InvalidRequest", '"base" and "stop_at_newline" must be true or false')
        return await answer(data["prompt"], tokens, with_base=flags["base"], stop_at_newline=flags["stop_at_newline"])

    add_openai_routes(app, answer=answer, tokenizer=service.reader.tokenizer, read_access=read_access, body=body,
                      tokens=_tokens, model_name=model_name)

    # -- operations --------------------------------------------------------------------------------------------------
    @app.get("/healthz")
    def healthz():  # without waiting for a running ask: a liveness probe answers at once
        editor = service.reader
        return {"status": "ok", "edits": len(editor.slots), "store": str(editor.store.path)}

    @app.get("/metrics", dependencies=[Depends(read_access)])
    def prometheus():
        return PlainTextResponse(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/info", dependencies=[Depends(read_access)])
    def info():
        with service.reading() as editor:
            return editor.info()

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    def docs():  # FastAPI's own pages load their scripts from a CDN: this one is plain HTML, served from here
        return HTMLResponse(api_page(app.openapi()))

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():  # browsers ask for it whatever the page links
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _job(job) -> dict[str, Any]:
    state = "failed" if job.error is not None else "done" if job.done else "running"
    return {"job": job.id, "kind": job.kind, "state": state, "events": f"/v1/jobs/{job.id}/events",
            "result": as_json(job.result),
            "error": {"error": type(job.error).__name__, "message": str(job.error)} if job.error else None}


def _tokens(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_NEW_TOKENS:
        raise HTTPError(400, "InvalidRequest", f"{name} must be an integer from 1 to {MAX_NEW_TOKENS}")
    return value
