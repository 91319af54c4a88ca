"""Tracing with OpenTelemetry: on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, off and free otherwise.

One request is one trace: the API's request span (Flask instrumentation), the Celery publish, whose
context travels in the message headers, the task that runs it (Celery instrumentation), the stages the
task goes through (embed, search, rerank; parse, chunk, embed, write for an ingest batch), and every
Redis (Redis instrumentation) and Milvus call (`traced` on the `VectorStore` methods) inside them. Spans go
over OTLP/HTTP (protobuf) to `<endpoint>/v1/traces`, batched by a background thread of each process.

Only requests and tasks start traces (`RequestRoots`): a Redis call outside both (the broker's polls, the
readiness refresh, heartbeat threads) would otherwise be a trace of its own, thousands a minute. With the
endpoint unset no provider, exporter or instrumentation is loaded and nothing is patched; `span` and
`stage` cost one flag check.

A batch of questions shares one embedding call, one search and one reranker call: each question's trace
gets each stage with the batch's times (`stage`), the first question's holding the calls made inside it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar, cast

from common.settings import Settings

if TYPE_CHECKING:
    from flask import Flask
    from opentelemetry.context import Context

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
TRACER = "quarry"
EXCLUDED_URLS = "healthz,readyz,metrics,static"  # probes and scrapes: no trace each


class _State:
    enabled = False
    pid = 0  # the process that set tracing up (a forked child sets it up again)


def enabled() -> bool:
    return _State.enabled


def setup(settings: Settings, component: str, app: Flask | None = None) -> bool:
    """Trace this process (`component`: api or worker) when an endpoint is set; whether it traces. Call
    it once per process, after fork: the exporter's thread does not survive one."""
    endpoint = settings.otel_exporter_otlp_endpoint
    if not endpoint:
        return False
    if _State.enabled and _State.pid == os.getpid():
        return True
    from opentelemetry import trace  # noqa: PLC0415 - only where tracing is on
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
    from opentelemetry.instrumentation.celery import CeleryInstrumentor  # noqa: PLC0415
    from opentelemetry.instrumentation.redis import RedisInstrumentor  # noqa: PLC0415
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.sampling import ParentBased  # noqa: PLC0415

    from common.trace_sampling import RequestRoots  # noqa: PLC0415

    resource = Resource.create({"service.name": f"{settings.otel_service_name}-{component}"})
    provider = TracerProvider(resource=resource, sampler=ParentBased(root=RequestRoots()))
    exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
    provider.add_span_processor(
        BatchSpanProcessor(exporter, schedule_delay_millis=settings.otel_bsp_schedule_delay)
    )
    trace.set_tracer_provider(provider)
    for instrumentor in (RedisInstrumentor(), CeleryInstrumentor()):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider)
    if app is not None:
        from opentelemetry.instrumentation.flask import FlaskInstrumentor  # noqa: PLC0415

        FlaskInstrumentor.instrument_app(app, excluded_urls=EXCLUDED_URLS, tracer_provider=provider)
    _State.enabled, _State.pid = True, os.getpid()
    log.info("tracing: spans of %s go to %s", component, endpoint)
    return True


def current() -> Context | None:
    """This thread's trace context, to hand to another thread (the micro-batcher); None when off."""
    if not _State.enabled:
        return None
    from opentelemetry import context  # noqa: PLC0415

    return context.get_current()


def span(name: str, **attributes: Any) -> Any:
    """A span around a block, a child of this thread's current one; nothing when tracing is off."""
    if not _State.enabled:
        return nullcontext()
    from opentelemetry import trace  # noqa: PLC0415

    return trace.get_tracer(TRACER).start_as_current_span(name, attributes=attributes)


def traced(name: str) -> Callable[[F], F]:
    """`span(name)` around every call of a function (the Milvus facade's methods)."""

    def decorate(fn: F) -> F:
        @wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if not _State.enabled:
                return fn(*args, **kwargs)
            with span(name):
                return fn(*args, **kwargs)

        return cast(F, call)

    return decorate


@contextmanager
def stage(name: str, contexts: Sequence[Context | None], **attributes: Any) -> Iterator[None]:
    """One stage of a batch, in each item's trace: a live span under the first item's context (calls
    made inside it become its children), and the same stage with the same times under each other one."""
    live = [ctx for ctx in contexts if ctx is not None]
    if not _State.enabled or not live:
        yield
        return
    from opentelemetry import trace  # noqa: PLC0415

    tracer = trace.get_tracer(TRACER)
    attributes = {"quarry.batch_size": len(contexts), **attributes}
    start = time.time_ns()
    with tracer.start_as_current_span(
        name, context=live[0], attributes=attributes, start_time=start
    ) as first:
        yield
    link = [trace.Link(first.get_span_context())]
    end = time.time_ns()
    for ctx in live[1:]:
        tracer.start_span(name, context=ctx, attributes=attributes, links=link, start_time=start).end(end)
