"""HTTP layer of the ensemble QA service.

Only HTTP concerns live here: settings, request/response schemas, error mapping and routes. The model and the
ensemble are built once by the lifespan (`app.service`) and reached through `app.deps`. Nothing here is
imported by `models/` or `ensemble/`.
"""
