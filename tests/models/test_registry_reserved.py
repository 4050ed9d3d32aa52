"""Adapter names clients could confuse with the base model are refused."""

import pytest

from models.adapters.registry import AdapterManifest
from models.errors import AdapterError


@pytest.mark.parametrize("name", ["base", "BASE", "Base"])
def test_reserved_names_are_refused(name):
    with pytest.raises(AdapterError, match="reserved for the base model"):
        AdapterManifest(
            name=name, base_model="tiny-random", base_fingerprint="f" * 64, prompt_style="zero-shot"
        )
