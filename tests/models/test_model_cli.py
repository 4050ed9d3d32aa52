"""`qa-model` CLI: list and fetch, with the cache directory from the flag or $QA_CACHE_DIR."""

import models.base.cli as cli


def test_list_shows_all_keys_and_cache_state(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QA_CACHE_DIR", str(tmp_path))
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for key in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "gemma-3-270m", "smollm2-135m"):
        assert key in out
    assert "(default)" in out and "cached " not in out


def test_fetch_passes_options_through(tmp_path, capsys, monkeypatch):
    seen = {}

    def fake_fetch(key, cache_dir, **kwargs):
        seen.update(key=key, cache_dir=cache_dir, **kwargs)
        return cache_dir / "models" / key

    monkeypatch.setattr(cli, "fetch_model", fake_fetch)
    gguf = tmp_path / "m.gguf"
    assert cli.main(["fetch", "smollm2-135m", "--cache-dir", str(tmp_path), "--gguf", str(gguf)]) == 0
    assert seen["key"] == "smollm2-135m" and seen["cache_dir"] == tmp_path and seen["gguf_path"] == gguf
    assert capsys.readouterr().out.strip() == str(tmp_path / "models" / "smollm2-135m")


def test_fetch_error_exits_1(tmp_path, capsys, monkeypatch):
    from models.errors import ModelSourceError

    def failing(*args, **kwargs):
        raise ModelSourceError("smollm2-135m: sha256 mismatch")

    monkeypatch.setattr(cli, "fetch_model", failing)
    assert cli.main(["fetch", "smollm2-135m", "--cache-dir", str(tmp_path)]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err
