"""Composition root: builds the base model, its adapters, the generator and the ensemble pipeline once.

`app/` (HTTP) and `evaluation/` (offline scoring) build an `Engine` with `build_engine`; `training/`
(validation during training) builds the same pipeline over the model being trained with
`pipeline_on_model`. Both compose the generator and the pipeline through the same two functions, so the
pipeline every caller runs is the one users get. This package only wires `models` to `ensemble`; it holds no
model code, no prompt text and no HTTP.
"""

from engine.builder import Engine, EngineConfig, build_engine, pipeline_on_model

__all__ = ["Engine", "EngineConfig", "build_engine", "pipeline_on_model"]
