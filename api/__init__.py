"""The HTTP API: `create_app(settings=None)` is the only way to build it."""

from __future__ import annotations

import logging

from flask import Flask

from api import auth, collections, jobs, limits, metrics, problems, spec
from api.routes import bp, health_bp
from api.services import Services
from api.web import bp as web_bp
from common.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app; nothing connects until a request needs it."""
    settings = settings or get_settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["quarry"] = Services(settings)
    problems.register(app)
    auth.install(app, settings.api_keys)
    limits.install(app, settings)  # after auth: the limit is per API key
    app.register_blueprint(bp)
    app.register_blueprint(collections.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(health_bp)
    app.register_blueprint(web_bp)  # the page at / and its /static/ assets: no key, no rate limit
    spec.install(app)  # after the blueprints: it documents their routes
    metrics.install(app)  # GET /metrics (open like /healthz); counts every request by route template
    logging.basicConfig(level=logging.INFO)
    return app
