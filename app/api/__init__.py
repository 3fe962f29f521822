"""The HTTP surfaces, one router each, gathered in `api_router`."""

from fastapi import APIRouter

from app.api import health, jobs, openai

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(openai.router)
api_router.include_router(jobs.router)
