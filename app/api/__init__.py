"""The HTTP surfaces, one router each, gathered in `api_router`."""

from fastapi import APIRouter

from app.api import diff, health, jobs, metrics, openai, ui

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(metrics.router)
api_router.include_router(openai.router)
api_router.include_router(jobs.router)
api_router.include_router(diff.router)
api_router.include_router(ui.router)  # the dashboard, last: it ends with a catch-all under /ui/
