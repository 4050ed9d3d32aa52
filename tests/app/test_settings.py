"""Which adapters a server serves when QA_ADAPTERS_DIR is not set."""

from pathlib import Path

from app.settings import EMBEDDED_ADAPTERS_BASE, REPO_ROOT, ServiceSettings


def test_the_embedded_adapters_go_with_the_default_base_only(tmp_path: Path):
    assert (REPO_ROOT / "adapters").is_dir()
    assert ServiceSettings(model=EMBEDDED_ADAPTERS_BASE).resolved_adapters_dir() == REPO_ROOT / "adapters"
    assert ServiceSettings(model="tiny-random").resolved_adapters_dir() is None
    assert ServiceSettings(model="tiny-random", adapters_dir=tmp_path).resolved_adapters_dir() == tmp_path
