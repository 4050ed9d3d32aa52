"""The token-length analysis: a table and histogram that agree with what the length policy will do."""

from ensemble.datasets import load_examples
from training.data import PromptEncoder, encode_examples
from training.lengths import LENGTHS_JSON, LENGTHS_MD, LENGTHS_PNG, measure, table, write_report


def test_lengths_table_and_histogram(news_fixture, tiny_tokenizer, tmp_path):
    examples = load_examples(news_fixture)
    encoder = PromptEncoder(tiny_tokenizer)
    stats, raw = measure(examples, encoder, ["zero-shot", "principled"], max_seq_len=700)
    zero_shot, principled = stats
    assert zero_shot.examples == 4 and zero_shot.prompt_max < principled.prompt_p50
    assert zero_shot.over_max_seq_len == 0 and principled.over_max_seq_len == 4
    lengths = sorted(raw["zero-shot"])
    assert (zero_shot.prompt_p50, zero_shot.prompt_max) == (lengths[2], lengths[-1])
    _, report = encode_examples(examples, encoder, "principled", max_seq_len=700, policy="drop")
    assert len(report.dropped) == principled.over_max_seq_len
    text = table(stats)
    assert text.count("\n") == 4 and "| principled | 4 |" in text
    paths = write_report(stats, raw, tmp_path / "out", title="tiny")
    assert [p.name for p in paths] == [LENGTHS_MD, LENGTHS_JSON, LENGTHS_PNG]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
