"""The search service: `app.create_app` (FastAPI) over a Searcher, `app.serve` (uvicorn), the
search page in `static/`. Import from `medsearch.server.app`; this package imports nothing heavy."""
