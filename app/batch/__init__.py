"""The batch feature: score a test file (`POST /batch`) now or as a job, one result per input row.

`input` reads and checks the uploaded rows (CSV, JSON, JSONL; a bad row is a 4xx naming it) into a
`PreparedBatch`; `result` renders the rows' results and scores; `routes` is the thin `POST /batch` router
(small files answered at once, large ones queued); `jobs` runs queued batches on a worker (`JobManager`),
`job_store` keeps their state and results on disk across restarts, `job_errors` are the typed errors a job
reports, and `job_routes` is the `/jobs` router. The batch run itself is `ensemble.batch.run_batch`, the same
code `qa-eval run` uses.
"""
