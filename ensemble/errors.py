"""Typed errors raised by the ensemble package.

Every error subclasses a built-in (so callers that only know ``KeyError`` / ``ValueError`` still catch it)
and carries the name of the offending request field in ``field`` and at the start of its message, so the HTTP
layer can map it to a 422 that points at the field. It deliberately does not map errors to HTTP codes.
"""

from __future__ import annotations

from collections.abc import Iterable


class UnknownPromptError(KeyError):
    """A prompt style name that is not in the registry."""

    def __init__(self, name: str, known: Iterable[str], *, field: str = "prompts") -> None:
        self.name = name
        self.known = tuple(sorted(known))
        self.field = field
        self.message = f"{field}: unknown prompt style {name!r}; known: {', '.join(self.known)}"
        super().__init__(self.message)

    def __str__(self) -> str:
        # KeyError.__str__ repr()s its argument, which would wrap the message in quotes.
        return self.message


class InvalidDecodingError(ValueError):
    """A decoding setting outside its valid range."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


class InvalidMemberError(ValueError):
    """An ensemble member with an unusable adapter name or weight."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


class EmptyPlanError(ValueError):
    """A plan with no members or no prompts, which would produce no candidates."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


class NoCandidatesError(ValueError):
    """A vote over an empty list of candidates."""

    def __init__(self, field: str = "candidates", problem: str = "nothing to vote on (empty list)") -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


class InvalidVoteConfigError(ValueError):
    """A voting setting outside its valid range (a deployment mistake, caught at startup)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class GeneratorContractError(RuntimeError):
    """The generator's answer breaks the CandidateGenerator protocol (a bug in models/, not bad input)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")
