"""Every endpoint, in one table (the OpenAPI document is checked against it)."""

from aiohttp import web

from . import handlers

ROUTES = [
    web.get("/", handlers.index, name="index"),
    web.get("/ping", handlers.ping, name="ping"),
    web.get("/metrics", handlers.metrics, name="metrics"),
    web.get("/api/v1/health", handlers.health, name="health"),
    web.get("/api/v1/openapi.json", handlers.openapi, name="openapi"),
    web.post("/api/v1/recommendations", handlers.recommend_post, name="recommendations"),
    web.get("/api/v1/recommendations/{user_id}", handlers.recommend_get, name="user_recommendations"),
    web.get("/api/v1/explain/{user_id}/{item_id}", handlers.explain, name="explain"),
    web.get("/api/v1/similar/{item_id}", handlers.similar, name="similar"),
    web.post("/api/v1/model/reload", handlers.reload_model, name="model_reload"),
    web.post("/api/v1/interactions", handlers.ingest_interactions, name="interactions"),
]
