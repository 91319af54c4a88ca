"""The root sampler of `common.tracing`: only a request or a task starts a trace (imported only when on)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

ROOT_KINDS = frozenset({SpanKind.SERVER, SpanKind.CONSUMER})  # an API request, a task run


class RequestRoots(Sampler):
    """Record a span that has no parent only when it is a request or a task: a Redis call outside both
    (the broker's polls, readiness refreshes, heartbeat threads) would otherwise be a trace of its own."""

    def should_sample(  # noqa: PLR0917 - the SDK's signature
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        decision = Decision.RECORD_AND_SAMPLE if kind in ROOT_KINDS else Decision.DROP
        return SamplingResult(decision, attributes if decision is Decision.RECORD_AND_SAMPLE else None)

    def get_description(self) -> str:
        return "RequestRoots"
