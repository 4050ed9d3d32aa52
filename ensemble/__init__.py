"""Ensemble extractive QA without the model: prompts, plans, answer clean-up, fuzzy voting and the pipeline.

Pure Python (rapidfuzz, numpy). Never imports torch, transformers, peft or ``models``; the pipeline reaches
the model only through the ``CandidateGenerator`` protocol.
"""

from ensemble.clean import Grounding, clean_answer, ground
from ensemble.errors import (
    EmptyPlanError,
    GeneratorContractError,
    InvalidDecodingError,
    InvalidMemberError,
    InvalidVoteConfigError,
    NoCandidatesError,
    UnknownPromptError,
)
from ensemble.pipeline import CandidateGenerator, EnsemblePipeline, PipelineConfig, PipelineStats, QARequest
from ensemble.plan import Decoding, Member, Plan, PlanItem, build_plan
from ensemble.prompts import (
    DEFAULT_PROMPTS,
    PROMPT_STYLES,
    PromptStyle,
    get_prompt_style,
    render_prompt,
    render_target,
)
from ensemble.vote import Candidate, Cluster, Vote, VoteConfig, VotedCandidate, vote

__all__ = [
    "DEFAULT_PROMPTS",
    "PROMPT_STYLES",
    "Candidate",
    "CandidateGenerator",
    "Cluster",
    "Decoding",
    "EmptyPlanError",
    "EnsemblePipeline",
    "GeneratorContractError",
    "Grounding",
    "InvalidDecodingError",
    "InvalidMemberError",
    "InvalidVoteConfigError",
    "Member",
    "NoCandidatesError",
    "PipelineConfig",
    "PipelineStats",
    "Plan",
    "PlanItem",
    "PromptStyle",
    "QARequest",
    "UnknownPromptError",
    "Vote",
    "VoteConfig",
    "VotedCandidate",
    "build_plan",
    "clean_answer",
    "get_prompt_style",
    "ground",
    "render_prompt",
    "render_target",
    "vote",
]
