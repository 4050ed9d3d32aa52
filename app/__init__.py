"""The ensemble QA service over HTTP: the HTTP layer and the service object behind it.

HTTP: settings, request/response schemas (`schemas`, `vote_request`), error mapping (`errors`), the routes
(`routes/`), authentication, limits, connections and request logs, and the app factory (`main`). Behind it:
`service.QAService` holds the `Engine` (`engine.build_engine`, built once by the lifespan, reached through
`deps`) and turns validated requests into pipeline calls; `admission` bounds concurrent work; the batch
feature is one package (`app.batch`: input, result, jobs and their routers). Nothing here is imported by
`models/`, `engine/` or `ensemble/`; `deploy/` reuses the HTTP layers and the service on Ray Serve.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qa-ensemble")
    """The installed distribution's version (pyproject.toml's): what /docs and the OpenAPI spec report."""
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
