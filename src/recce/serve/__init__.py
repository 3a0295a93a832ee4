"""`recce serve`: a local web app and HTTP API around `recce detect` (FastAPI + uvicorn, nothing external)."""
