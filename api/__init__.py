"""The HTTP API: `create_app(settings=None)` is the only way to build it."""

from __future__ import annotations

import logging

from flask import Flask

from api import auth, collections, guard, jobs, jsonbody, limits, metrics, problems, spec
from api.routes import bp, health_bp
from api.services import Services
from api.web import bp as web_bp
from common import tracing
from common.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app; nothing connects until a request needs it."""
    settings = settings or get_settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    jsonbody.install(app, settings.max_json_depth)  # bodies the decoder cannot take are a 400, never a 500
    app.extensions["quarry"] = Services(settings)
    problems.register(app)
    guard.install(app, settings)  # open mode only: Host (DNS rebinding) and Origin (CSRF) checks, first
    auth.install(app, settings.api_keys)
    limits.install(app, settings)  # after auth: the limit is per API key
    app.register_blueprint(bp)
    app.register_blueprint(collections.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(health_bp)
    app.register_blueprint(web_bp)  # the page at / and its /static/ assets: no key, no rate limit
    spec.install(app)  # after the blueprints: it documents their routes
    metrics.install(app)  # GET /metrics (open like /healthz); counts every request by route template
    tracing.setup(settings, "api", app)  # OTLP spans when OTEL_EXPORTER_OTLP_ENDPOINT is set; else nothing
    logging.basicConfig(level=logging.INFO)
    return app
