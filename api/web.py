"""The small web page at `/`: upload, follow jobs, ask. Plain files in `api/static/`, no build step.

`/static/<file>` is Flask's own static route: the app's root is this package, so `api/static/` is its
static folder (revalidated on every load, unknown names a 404 problem, no path escapes).

The page and its assets need no API key (they hold no data; every call the page makes sends the key the
user types) and are not rate limited: both only look at `/api/` paths. They go out with a strict
Content-Security-Policy (scripts and styles from this origin only, nothing inline), so even text that
slipped into the DOM as markup could not run.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, request, send_from_directory
from flask.sansio.blueprints import BlueprintSetupState

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/static/"

PAGE_HEADERS = {
    "Content-Security-Policy": "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

bp = Blueprint("web", __name__)


@bp.record_once
def _check_assets(state: BlueprintSetupState) -> None:
    """Fail at start-up, not in the browser, if the app stops serving `api/static/` at `/static/`."""
    folder, url = state.app.static_folder, state.app.static_url_path
    if folder is None or Path(folder) != STATIC_DIR or url != STATIC_PREFIX.rstrip("/"):
        raise RuntimeError(f"the web page needs Flask's static route serving {STATIC_DIR} at {STATIC_PREFIX}")


@bp.get("/")
def index() -> Response:
    response = send_from_directory(STATIC_DIR, "index.html")
    response.headers["Cache-Control"] = "no-cache"  # revalidate: a new release's page references new assets
    return response


@bp.after_app_request
def _security_headers(response: Response) -> Response:
    """The page and its assets (served by the app's static route, not this blueprint) get the strict set."""
    if request.path == "/" or request.path.startswith(STATIC_PREFIX):
        for name, value in PAGE_HEADERS.items():
            response.headers[name] = value
    return response
