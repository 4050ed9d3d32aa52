"""Typed errors raised by `models/`; each subclasses the built-in it refines so callers can catch either.

Messages name the thing at fault (model key, adapter name, manifest field, prompt index). Mapping them to
HTTP statuses is the app's job, not this module's.
"""


class ModelSourceError(RuntimeError):
    """A base model could not be fetched, assembled, verified or resolved."""


class AdapterError(ValueError):
    """An adapter folder or its manifest is invalid."""


class AdapterBaseMismatchError(AdapterError):
    """An adapter was trained for another base model than the one being served."""


class UnknownAdapterError(KeyError):
    """A client named an adapter that is not registered or not loaded."""

    def __str__(self) -> str:
        # KeyError's own __str__ is repr(arg), which wraps the message in quotes.
        return str(self.args[0]) if self.args else ""


class PromptTooLongError(ValueError):
    """A prompt has more tokens than the generator accepts."""


class AdapterNotFoundError(UnknownAdapterError):
    """A named adapter has no folder under the adapters folder, or is not loaded (for an unload)."""


class GenerationOutOfMemoryError(RuntimeError):
    """The accelerator ran out of memory even for a single row; the caller may retry later."""


class AdapterCapacityError(ValueError):
    """More adapters are needed at once than `max_resident_adapters` allows (or the rest are pinned)."""
