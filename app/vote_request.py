"""`VoteRequest`: the request's `vote` object, derived from the scalar fields of `ensemble.vote.VoteConfig`.

Each field a client can send as a JSON scalar (a number, a boolean, a name of a `Literal`, or one of these or
null) becomes an optional request field of the same type, documented with the dataclass field's docstring, so
a new vote setting is a request field with no edit here; fields that are not scalars (a fitted calibration)
stay server-side. Ranges are not repeated: the override is `dataclasses.replace`d over the server's config
(`app.service`), whose `__post_init__` raises `InvalidVoteConfigError` naming `vote.<field>` (a 422).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator

from ensemble.vote import VoteConfig


def _attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a class's annotated attributes (as `VoteConfig` documents its fields)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # no source (a frozen build): the fields go undocumented, not missing
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


_SCALARS = (bool, int, float, str)


def _scalar(hint: object) -> bool:
    """A JSON scalar a client can send: bool/int/float/str, a Literal of them, or one of these or None."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return all(isinstance(arg, _SCALARS) for arg in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return len(args) == 1 and _scalar(args[0])
    return hint in _SCALARS


def _accepts_none(hint: object) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


class _VoteOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")

    setting_types: ClassVar[dict[str, object]] = {}
    """The `VoteConfig` fields a request may override, with their dataclass types."""

    @field_validator("*", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: object, info: ValidationInfo) -> object:
        # pydantic's lax mode reads true as 1: a JSON boolean is a number only where the field is a boolean.
        hint = cls.setting_types.get(info.field_name or "")
        is_bool = [arg for arg in (*typing.get_args(hint), hint) if arg in _SCALARS] == [bool]
        if isinstance(value, bool) and not is_bool:
            raise ValueError("must be a number or a name, not a boolean")
        return value

    def overrides(self) -> dict[str, Any]:
        """The fields the client set, to `dataclasses.replace` over the server's `VoteConfig`; a null counts
        as not set unless the setting itself may be None."""
        return {
            name: value
            for name, value in self.model_dump(exclude_unset=True).items()
            if value is not None or _accepts_none(self.setting_types[name])
        }


def _vote_request_model() -> type[_VoteOverride]:
    hints = typing.get_type_hints(VoteConfig)
    docs = _attribute_docs(VoteConfig)
    fields: dict[str, Any] = {}
    setting_types: dict[str, object] = {}
    for field in dataclasses.fields(VoteConfig):
        hint = hints[field.name]
        if not field.init or not _scalar(hint):
            continue  # e.g. a fitted calibration: a server-side artefact, not a request knob
        setting_types[field.name] = hint
        extra = {"allow_inf_nan": False} if float in (hint, *typing.get_args(hint)) else {}
        fields[field.name] = (hint | None, Field(None, description=docs.get(field.name), **extra))
    model = create_model("VoteRequest", __base__=_VoteOverride, **fields)
    model.setting_types = setting_types
    model.__doc__ = (
        "Overrides of the server's vote settings (`ensemble.vote.VoteConfig`) for this request: only the "
        "fields given change; each is checked as the server's own (422 naming vote.<field>)."
    )
    return model


VoteRequest = _vote_request_model()
