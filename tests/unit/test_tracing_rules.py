"""Tracing's rules: off (no endpoint) sets up and patches nothing; only requests and tasks start traces; a
batch stage appears in each of its items' traces with the batch's times, calls inside it under the first."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased
from opentelemetry.trace import SpanKind

from common import tracing
from common.trace_sampling import RequestRoots

OFF_CHECK = """
import sys
from api import create_app
from common.settings import Settings
app = create_app(Settings(otel_exporter_otlp_endpoint=None))
import workers.retrieval, store.milvus  # the traced code paths too
from opentelemetry import trace
parts = ("opentelemetry.instrumentation", "opentelemetry.exporter")
loaded = sorted(m for m in sys.modules if m.startswith(parts))
assert not loaded, loaded  # (redis-py imports the SDK's metrics by itself when it is installed)
assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"  # none set: spans are no-ops
assert type(app.wsgi_app).__name__ != "OpenTelemetryMiddleware"
print("off")
"""


def test_without_an_endpoint_nothing_is_set_up_or_patched() -> None:
    done = subprocess.run([sys.executable, "-c", OFF_CHECK], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "off", done.stderr


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, with the service's sampler (no global provider is set)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(root=RequestRoots()))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer", lambda name, *_, **__: provider.get_tracer(name))
    monkeypatch.setattr(tracing._State, "enabled", True)
    yield exporter


def test_only_requests_and_tasks_start_a_trace(spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("t")
    for kind in (SpanKind.CLIENT, SpanKind.INTERNAL, SpanKind.PRODUCER):
        with tracer.start_as_current_span(f"alone-{kind.name}", kind=kind), tracing.span("inside"):
            pass
    request = tracer.start_as_current_span("request", kind=SpanKind.SERVER)
    with request, tracer.start_as_current_span("redis", kind=SpanKind.CLIENT):
        pass
    with tracer.start_as_current_span("task", kind=SpanKind.CONSUMER):
        pass
    assert sorted(s.name for s in spans.get_finished_spans()) == ["redis", "request", "task"]


def test_a_batch_stage_is_in_every_items_trace_with_the_batchs_times(spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("t")
    contexts = []
    for name in ("task-1", "task-2", "task-3"):
        with tracer.start_as_current_span(name, kind=SpanKind.CONSUMER):
            contexts.append(tracing.current())
    with (
        tracing.stage("search", [contexts[0], None, contexts[1], contexts[2]]),
        tracing.span("milvus.search"),
    ):
        pass
    finished = spans.get_finished_spans()
    tasks = {s.name: s for s in finished if s.name.startswith("task")}
    stages = [s for s in finished if s.name == "search"]
    assert len(stages) == 3
    assert {s.parent.span_id for s in stages if s.parent} == {t.context.span_id for t in tasks.values()}
    assert {(s.start_time, s.attributes["quarry.batch_size"]) for s in stages} == {(stages[0].start_time, 4)}
    first = next(s for s in stages if s.parent and s.parent.span_id == tasks["task-1"].context.span_id)
    (call,) = [s for s in finished if s.name == "milvus.search"]
    assert call.parent is not None and call.parent.span_id == first.context.span_id
    assert all(s.links[0].context.span_id == first.context.span_id for s in stages if s is not first)
    assert context.get_current() == context.Context()  # nothing left attached in the batch's thread


def test_without_contexts_a_stage_is_no_span(spans: InMemorySpanExporter) -> None:
    with tracing.stage("embed", [None, None]):
        pass
    assert spans.get_finished_spans() == ()
