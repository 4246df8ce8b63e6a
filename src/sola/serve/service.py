"""The editing service behind `sola serve`: one writer, many askers, one store.

Two editors share the store. The writer (one worker thread) makes every edit and rollback, one at a time, in the order
they were submitted. The reader answers: asks hold `_asking`, so an ask runs alone on the reader (an editor computes
one routing decision at a time), and the reader takes in commits (`Editor.refresh`) only between asks: after each of
the writer's jobs, and, for another process's commits, once at the start of an ask (`Editor.steady`), never inside it.
So an ask (its explanation and its answer) sees the store as it was before an edit or after it, never between, and
asks go on while an edit trains.

The price is a second copy of the model in memory; `single_model=True` uses one editor for both, and asks then wait
while an edit trains.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from .. import batching
from ..edit import Edit
from ..errors import InternalError, SolaError
from ..prompts import check_text, check_token_limits

MAX_BATCH = 64  # edit requests in one call
KEPT_JOBS = 1000  # finished jobs remembered (their events), oldest forgotten first


@dataclass
class Job:
    """A submitted change: its events (queued, progress, committed / failed), kept for the job's life."""

    id: str
    kind: str  # "edit" or "rollback"
    events: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    result: Any = None
    error: SolaError | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def emit(self, event: str, **data: Any) -> None:
        with self._changed:
            self.events.append({"event": event, "at": time.time(), **data})
            self._changed.notify_all()

    def finish(self, result: Any = None, error: SolaError | None = None) -> None:
        with self._changed:
            self.result, self.error, self.done = result, error, True
            self._changed.notify_all()

    def follow(self, timeout: float = 15.0) -> Iterator[dict[str, Any] | None]:
        """Every event, the past ones first, until the job is done; None when `timeout` passes without one (a
        keep-alive)."""
        seen = 0
        while True:
            with self._changed:
                if seen == len(self.events) and not self.done:
                    self._changed.wait(timeout)
                new, finished = self.events[seen:], self.done
            seen += len(new)
            yield from new
            if finished and seen == len(self.events):
                return
            if not new:
                yield None


class EditService:
    def __init__(self, reader, writer=None, *, on_change: Callable[[str, Any], None] | None = None,
                 adapters=None) -> None:
        self.reader = reader
        self.writer = writer if writer is not None else reader
        self.adapters = adapters  # an engine's adapters (`sola.serve.engine.Adapters`): answers come from the engine
        self._asking = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._queue: queue.Queue = queue.Queue()
        self._listeners: list[Callable[[str, Any], None]] = [on_change] if on_change else []
        self._worker = threading.Thread(target=self._work, name="sola-writer", daemon=True)
        self._worker.start()

    def on_change(self, listener: Callable[[str, Any], None]) -> None:
        """Call `listener(kind, result)` after each committed job ("edit": the edits, "rollback": the edit)."""
        self._listeners.append(listener)

    # -- reading -----------------------------------------------------------------------------------------------------
    @contextmanager
    def reading(self) -> Iterator[Any]:
        """The reader, alone: what is read inside sees one state of the store."""
        with self._asking, self.reader.steady():
            yield self.reader

    def ask(self, prompt: str, max_new_tokens: int = 32, *, with_base: bool = True,
            stop_at_newline: bool = True) -> dict[str, Any]:
        """The edited answer (and the base model's), routed once; a prompt longer than an edit's may be is refused
        (`MAX_PROMPT_TOKENS`: the key encoder would read only its start)."""
        if self.adapters is not None:
            return self._ask_engine(prompt, max_new_tokens, with_base, stop_at_newline)
        with self.reading() as editor:
            check_token_limits(editor.encode(check_text(prompt, "prompt")))
            why = editor.explain(prompt)
            answer = editor.generate(prompt, max_new_tokens, stop_at_newline=stop_at_newline)
            base = None
            if with_base:
                with editor.disabled():
                    base = editor.generate(prompt, max_new_tokens, stop_at_newline=stop_at_newline)
        return answered(prompt, answer, base, why)

    def _ask_engine(self, prompt: str, max_new_tokens: int, with_base: bool, stop_at_newline: bool,
                    retry: bool = True) -> dict[str, Any]:
        """Route under the lock (one state of the store, the adapter loaded), generate outside it: the engine batches
        concurrent questions. An adapter unloaded in between (its edit was just rolled back) routes the question
        again."""
        from .engine import EngineError

        with self.reading() as editor:
            encoded = editor.encode(check_text(prompt, "prompt"))
            check_token_limits(encoded)
            why = editor.explain(prompt)
            adapter = self.adapters.ensure(editor, why.edit_id) if why.routed else None
            cut = editor.task.cut_answer
        try:
            answer = cut(self.adapters.engine.complete(encoded.ids, max_new_tokens, adapter, stop_at_newline),
                         stop_at_newline)
        except EngineError:
            if adapter is None or not retry:
                raise
            return self._ask_engine(prompt, max_new_tokens, with_base, stop_at_newline, retry=False)
        base = cut(self.adapters.engine.complete(encoded.ids, max_new_tokens, None, stop_at_newline),
                   stop_at_newline) if with_base else None
        return answered(prompt, answer, base, why)

    # -- changing ----------------------------------------------------------------------------------------------------
    def submit_edits(self, requests: list[dict[str, Any]]) -> Job:
        """Queue edit requests (checked first: a bad one raises and nothing is queued)."""
        if not 1 <= len(requests) <= MAX_BATCH:
            raise SolaError(f"give 1 to {MAX_BATCH} edit requests in one call (got {len(requests)}); send more in "
                            "several calls")
        with self.reading() as editor:  # every check but training, before anything is queued
            checked = batching.check_requests(editor, requests)
            batching.check_supersedes(editor, checked)
        return self._submit("edit", (requests, checked))

    def submit_rollback(self, edit_id: str) -> Job:
        with self.reading() as editor:
            editor.live_edit(edit_id)  # an unknown or rolled-back edit is an error now, not a failed job
        return self._submit("rollback", edit_id)

    def job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def _submit(self, kind: str, payload: Any) -> Job:
        job = Job(id=f"j{next(self._ids)}", kind=kind)
        finished = [j for j in self._jobs.values() if j.done]
        for old in finished[:max(0, len(finished) - KEPT_JOBS + 1)]:  # a long-running server does not grow
            del self._jobs[old.id]
        self._jobs[job.id] = job
        job.emit("queued", position=self._queue.qsize())
        self._queue.put((job, payload))
        return job

    def wait(self, job: Job) -> Any:
        """The job's result, once done (its error raised)."""
        for _ in job.follow():
            pass
        if job.error is not None:
            raise job.error
        return job.result

    def _work(self) -> None:
        while True:
            job, payload = self._queue.get()
            try:
                job.emit("started")
                with self._asking if self.reader is self.writer else nullcontext():  # one editor: asks wait
                    result = self._edit(job, *payload) if job.kind == "edit" else self.writer.rollback(payload)
                self._publish()
                if self.adapters is not None:  # the engine serves the change before it is reported done
                    self.adapters.committed(self.writer, job.kind, result)
                for listener in self._listeners:
                    listener(job.kind, result)
                job.emit("committed", result=as_json(result))
                job.finish(result)
            except SolaError as error:
                self._publish()  # a batch may have committed some edits before one failed
                job.emit("failed", error=type(error).__name__, message=str(error))
                job.finish(error=error)
            except Exception as error:  # noqa: BLE001 - the worker must survive; the job reports it
                job.emit("failed", error="InternalError", message=f"{type(error).__name__}: {error}")
                job.finish(error=InternalError(f"{type(error).__name__}: {error}"))

    def _edit(self, job: Job, requests: list[dict[str, Any]], checked: list) -> list[Edit]:
        """One request trains with progress events (`Editor.edit`); a batch reports each request as it settles."""
        def progress(step: int, loss: float) -> None:
            job.emit("progress", step=step, loss=round(loss, 5))

        if len(checked) == 1:
            r = checked[0]
            return [self.writer.edit(list(r.prompts), r.target, subject=r.subject, supersedes=r.supersedes,
                                     new_fact=r.new_fact, progress=progress)]
        return self.writer.edit_many(requests, on_result=lambda i, edit, status: job.emit(
            "result", index=i, status=status, edit=edit.id or None))

    def _publish(self) -> None:
        """The reader takes in the writer's commits, between asks."""
        if self.reader is not self.writer:
            with self._asking:
                self.reader.refresh()


def answered(prompt: str, answer: str, base: str | None, why) -> dict[str, Any]:
    """An ask's reply: the answers, the route (None: the base model answered) and why (`Editor.explain`)."""
    return {"prompt": prompt, "answer": answer, "base_answer": base,
            "route": {"edit_id": why.edit_id, "distance": why.distance} if why.routed else None,
            "explanation": {**why.to_dict(), "text": str(why)}}


def as_json(result: Any) -> Any:
    """A job's result (an Edit, a list of them, or None) as JSON values."""
    if isinstance(result, Edit):
        return result.to_dict()
    if isinstance(result, list):
        return [as_json(r) for r in result]
    return result
