"""The README's configuration table names every setting (its QA_ variable), so it stays the full reference."""

from pathlib import Path

from app.settings import ServiceSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme_table() -> None:
    table = README.read_text(encoding="utf-8").split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in ServiceSettings.model_fields if f"`QA_{name.upper()}`" not in table]
    assert not missing, f"settings missing from README's Configuration table: {missing}"
