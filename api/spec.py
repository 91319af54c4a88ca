"""The API's contract, kept by spectree: it validates requests with the pydantic models in `api.schemas`
and builds `/openapi.json` and the interactive docs at `/docs` from the same models, so the document
cannot drift from what the views accept.

Validation failures are raised, not answered by spectree, so they become problem+json in `api.problems`
like every other error. The docs pages are spectree's offline templates (package `offapi`): a
self-hosted service's docs must not depend on a CDN.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from flask import Flask, redirect, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from spectree import Response as Responses
from spectree import SecurityScheme, SecuritySchemeData, SpecTree
from spectree.models import SecureType
from spectree.plugins.flask_plugin import FlaskPlugin
from spectree.utils import get_multidict_items
from werkzeug.exceptions import BadRequest

from common.errors import InvalidRequest, UnsupportedMediaType
from common.job_record import JobState
from common.reports import STATUSES

DOCS_PATH = "docs"
FORM_TYPES = frozenset({"multipart/form-data", "application/x-www-form-urlencoded"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _before(req: Any, resp: Any, error: Exception | None, instance: Any, adapter: Any = None) -> None:
    """Turn spectree's validation failure into the service's own errors (415, 400 or 422)."""
    if error is None:
        return
    if req.method in BODY_METHODS and req.mimetype not in FORM_TYPES and not req.is_json:
        raise UnsupportedMediaType(f"expected application/json, got {req.mimetype or 'no content type'}")
    if req.is_json and req.get_json(silent=True) is None:
        raise BadRequest(f"the body is not valid JSON: {_json_error(req)}")
    if isinstance(error, ValidationError):
        raise error  # -> 422 problem with each field's message (api.problems)
    raise InvalidRequest(str(error))


def _json_error(req: Any) -> str:
    """Why the body could not be decoded, in the decoder's words (`api.jsonbody`)."""
    try:
        req.get_json()
    except BadRequest as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ValueError):  # Flask wraps the decoder's error
            cause = cause.__cause__ or cause.__context__
        return str(cause or "it cannot be decoded")
    return "it is null"


class FlaskFormFields(FlaskPlugin):  # type: ignore[misc]
    """Validates only a form's text fields: file parts stay in `request.files`, and a validation error
    never has to echo a file back."""

    def fill_form(self, request: Any) -> dict[str, Any]:
        return get_multidict_items(request.form)  # type: ignore[no-any-return]


spec = SpecTree(
    "flask",
    backend=FlaskFormFields,
    title="Quarry",
    version="1",
    description="Asynchronous semantic search: submit documents and questions as jobs, poll their results.",
    path=DOCS_PATH,
    mode="strict",  # only the decorated API routes, not static files or the docs themselves
    annotations=False,
    before=_before,
    naming_strategy=lambda model: model.__name__,  # stable component names, no hash suffixes
    security_schemes=[
        SecurityScheme(name="bearer", data=SecuritySchemeData(type=SecureType.HTTP, scheme="bearer"))
    ],
    security={"bearer": []},
)
PUBLIC: dict[str, list[str]] = {}  # `security=PUBLIC`: the route needs no API key


# --- responses (documentation and a check on what the views return) ---


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error response (`application/problem+json`)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str


class JobAccepted(BaseModel):
    """202: the job is recorded and queued; poll `status_url` (also in the `Location` header)."""

    job_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    status_url: str


class Job(BaseModel):
    """A job's state, progress and, once it ended, its result or the reason it failed."""

    model_config = ConfigDict(extra="allow")

    job_id: str
    kind: str
    state: str = Field(description="queued, running, succeeded, failed or cancelled")
    progress: dict[str, int]
    result: Any = None
    error: str | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None


class Page(BaseModel):
    """A page of items; ask again with `offset=next_offset` until it is null."""

    model_config = ConfigDict(extra="allow")

    items: list[dict[str, Any]]
    total: int
    offset: int
    next_offset: int | None


class CollectionList(BaseModel):
    items: list[dict[str, Any]]


class Collection(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    documents: int
    chunks: int


class Health(BaseModel):
    status: str = Field(description="ok, or degraded when a dependency is down (503)")
    checks: dict[str, dict[str, Any]]


def responses(*errors: int, **ok: type[BaseModel] | tuple[None, str]) -> Responses:
    """Success models by status (`HTTP_202=JobAccepted`; `(None, "media/type: what")` for a body that is
    not JSON) and the problem statuses a route can answer."""
    problems: dict[str, type[BaseModel]] = {f"HTTP_{code}": Problem for code in (*errors, 401, 429, 503)}
    return Responses(**{**problems, **ok})


# --- query strings ---


class WaitQuery(BaseModel):
    model_config = ConfigDict(extra="allow")

    wait: float = Field(0.0, ge=0, allow_inf_nan=False, description="seconds to long-poll for the end")


class JobDocumentsQuery(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str | None = Field(None, pattern="^(" + "|".join(STATUSES) + ")$")
    offset: int = Field(0, ge=0, le=10**9)
    limit: int = Field(100, ge=1, le=1000)


class CollectionDocumentsQuery(BaseModel):
    model_config = ConfigDict(extra="allow")

    offset: int = Field(0, ge=0, le=16_383, description="Milvus caps offset + limit at 16,384")
    limit: int = Field(100, ge=1, le=1000)


class JobListQuery(BaseModel):
    model_config = ConfigDict(extra="allow")

    state: JobState | None = None
    kind: Literal["ingest", "ask", "delete"] | None = None
    collection: str | None = Field(None, min_length=1, max_length=255)
    created_after: datetime | None = Field(
        None, description="only jobs created after this time (UTC if naive)"
    )
    limit: int = Field(20, ge=1, le=100)
    cursor: str | None = Field(None, max_length=200, description="next_cursor of the previous page")


class JobList(BaseModel):
    """A page of jobs, newest first, each as GET /api/v1/jobs/<id> shows it but without its result; ask
    again with `cursor=next_cursor` until it is null."""

    items: list[dict[str, Any]]
    next_cursor: str | None


def validated(part: str) -> Any:
    """The current request's `json`, `form` or `query` model instance, as spectree validated it."""
    return getattr(request.context, part)  # type: ignore[attr-defined]


def document() -> dict[str, Any]:
    """spectree's document, with error bodies declared as what they are: `application/problem+json`."""
    doc: dict[str, Any] = spec.spec
    for operation in (op for path in doc["paths"].values() for op in path.values()):
        for response in operation["responses"].values():
            content = response.get("content", {})
            if content.get("application/json", {}).get("schema", {}).get("$ref", "").endswith("/Problem"):
                content["application/problem+json"] = content.pop("application/json")
            media, _, what = response.get("description", "").partition(": ")
            if what and "/" in media and " " not in media and not content:  # `(None, "text/event-stream: …")`
                response["content"] = {media: {"schema": {"type": "string"}}}
                response["description"] = what
    return doc


def install(app: Flask) -> None:
    """`/openapi.json` and `/docs` (Swagger UI; ReDoc and Scalar at `/docs/redoc/`, `/docs/scalar/`)."""
    spec.register(app)
    serve = lambda: app.json.response(document())  # noqa: E731
    app.view_functions[f"openapi_{DOCS_PATH}"] = serve  # the docs pages load /docs/openapi.json: same body
    app.add_url_rule("/openapi.json", "openapi_json", serve)
    app.add_url_rule("/docs", "docs", lambda: redirect(f"/{DOCS_PATH}/swagger/"))
    app.add_url_rule("/docs/", "docs_slash", lambda: redirect(f"/{DOCS_PATH}/swagger/"))
