"""Offline scoring: `qa-eval score` (EM/F1 of a prediction file) and `qa-eval run` (the pipeline over a data
file, written up as a report folder with tables, JSON and plots).

It imports `engine` (to build the same pipeline the service runs) and `ensemble` (data files, batch runner,
metric); nothing imports it. It never imports torch itself: versions are read from package metadata, and the
model is reached only through the engine it builds.
"""
