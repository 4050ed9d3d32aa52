"""Composition root: builds the base model, its adapters, the generator and the ensemble pipeline once.

`app/` (HTTP), `evaluation/` (offline scoring) and `training/` (validation during training) all build an
`Engine` the same way, so the pipeline they run is the one users get. This package only wires `models` to
`ensemble`; it holds no model code, no prompt text and no HTTP.
"""

from engine.builder import Engine, EngineConfig, build_engine

__all__ = ["Engine", "EngineConfig", "build_engine"]
