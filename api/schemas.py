"""Request bodies, validated by pydantic; limits that depend on settings are checked by the views."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)
from spectree.model_adapter.pydantic_adapter import BaseFile

from common.callback_urls import MAX_URL_CHARS, check_callback_url
from common.contracts import StageOptions
from common.errors import InvalidRequest
from common.fields import MAX_DOC_ID_BYTES, MAX_TITLE_CHARS
from common.types import OnDuplicate, RerankerBackend
from ingestion.validation import id_problem

COLLECTION_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
CollectionName = Annotated[str, StringConstraints(pattern=COLLECTION_PATTERN)]
NonBlank = Annotated[str, StringConstraints(min_length=1)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, StringConstraints(min_length=1, max_length=MAX_DOC_ID_BYTES)] | None = None
    text: NonBlank
    title: Annotated[str, StringConstraints(max_length=MAX_TITLE_CHARS)] = ""
    metadata: dict[str, Any] = Field(default_factory=dict)

    _text_not_blank = field_validator("text")(_not_blank)

    @field_validator("id")
    @classmethod
    def _id_fits(cls, value: str | None) -> str | None:
        """The workers' own check of an id (`ingestion.validation`), so both refuse the same ids."""
        if value is not None and (problem := id_problem(value)):
            raise ValueError(problem)
        return value


ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
CallbackUrl = Annotated[str, StringConstraints(max_length=MAX_URL_CHARS), AfterValidator(check_callback_url)]
CALLBACK_DOC = "http(s) URL that gets one signed POST of the job when it ends (see Webhooks)"
UploadedFile = BaseFile  # "format: binary" in the document


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn] = Field(min_length=1)
    collection: CollectionName | None = None
    on_duplicate: OnDuplicate = "skip"
    callback_url: CallbackUrl | None = Field(None, description=CALLBACK_DOC)


class UploadForm(BaseModel):
    """Form fields that come with a multipart upload. File parts may have any name; `files` is the one the
    document shows (they are read from the request by `api.uploads`, not through this model)."""

    model_config = ConfigDict(extra="forbid")

    files: list[UploadedFile] = Field(
        default_factory=list, description=".txt .md .html .pdf .docx .json .jsonl .csv, or .zip of them"
    )
    collection: CollectionName | None = None
    on_duplicate: OnDuplicate = "skip"
    text_column: ColumnName = "text"
    id_column: ColumnName = "id"
    title_column: ColumnName | None = None
    callback_url: CallbackUrl | None = Field(None, description=CALLBACK_DOC)

    def parse_options(self) -> dict[str, str | None]:
        return {
            "text_column": self.text_column,
            "id_column": self.id_column,
            "title_column": self.title_column,
        }


class AskRequest(StageOptions):
    """A question, and the stage switches of `StageOptions` (the task's own model of them)."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    question: NonBlank
    top_k: int | None = Field(default=None, ge=1)
    collection: CollectionName | None = None
    rerank: bool | None = None
    reranker: RerankerBackend | None = None
    filters: dict[str, Any] = Field(default_factory=dict)
    callback_url: CallbackUrl | None = Field(None, description=CALLBACK_DOC)

    def chosen_reranker(self, default: str) -> str | None:
        """The backend this question is reranked with, or None; a request may switch it or turn it off."""
        if self.rerank is False:
            if self.reranker is not None:
                raise InvalidRequest('"rerank": false contradicts "reranker"; send one of them')
            return None
        if self.reranker is not None:
            return self.reranker
        if default == "none":
            if self.rerank:
                raise InvalidRequest('no reranker is configured; send "reranker" to choose one')
            return None
        return default

    def stage_options(self) -> StageOptions:
        """Only the switches; the worker fills what the request left out from settings."""
        return StageOptions.model_validate(self.model_dump(include=set(StageOptions.model_fields)))

    _question_not_blank = field_validator("question")(_not_blank)
