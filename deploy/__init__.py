"""Serving the same pipeline on Ray Serve, beyond one machine (issue 8).

`deploy.ray_serve.build_app` is the application: an HTTP ingress with the single-process API
(`deploy.ingress`) in front of model replicas that each hold the base once and load adapter sets on demand,
routed by Serve's model multiplexing (`deploy.replica`, `deploy.adapter_sets`); large batches are spread over
the replicas (`deploy.fanout`). It reuses `app` (schemas, errors, checks, jobs) and `engine` as they are and
adds no model code. Importing it needs `ray[serve]` (the `ray` extra); nothing else imports it.
"""
