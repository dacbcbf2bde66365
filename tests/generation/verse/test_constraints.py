"""Each verse rule alone, on a small vocabulary: what it lets through at each position."""

from __future__ import annotations

import torch

from charlstm.data.corpus import Vocab
from charlstm.generation.rules import At
from charlstm.generation.verse.constraints import AcrosticRule, FormRule, RhymeRule, ToneRule
from charlstm.generation.verse.forms import PRESETS, Form, Line
from charlstm.generation.verse.rhyme import rhyme_table

VOCAB = Vocab(list("東風中紅陽光長天年月日酒春\n，。 a"))
CPU = torch.device("cpu")


def allowed_chars(mask: torch.Tensor) -> list[str]:
    """The characters a (V,) mask lets through."""
    return [VOCAB.idx_to_char[i] for i in mask.nonzero().squeeze(1).tolist()]


def mask(rule: object, rows: int, line: int, pos: int) -> torch.Tensor:
    """What ``rule`` lets through (rows, V) at position ``pos`` of line ``line``: the
    characters its logits rule leaves above -inf."""
    logits = rule(torch.zeros((rows, len(VOCAB))), At(line, pos))  # type: ignore[operator]
    return logits > float("-inf")


def test_form_allows_only_chinese_characters_inside_a_line_and_forces_the_ending() -> None:
    rule = FormRule(PRESETS["五言绝句"], VOCAB, CPU)
    inside = allowed_chars(mask(rule, 1, 0, 4)[0])
    assert inside == list("東風中紅陽光長天年月日酒春")
    assert allowed_chars(mask(rule, 1, 0, 5)[0]) == ["，"]
    assert rule.steps(1) == 7  # 5 characters, 。 and the newline
    assert [allowed_chars(mask(rule, 1, 1, p)[0]) for p in (5, 6)] == [["。"], ["\n"]]


def test_form_without_newlines_in_the_vocabulary_ends_lines_with_a_space() -> None:
    vocab = Vocab(list("東風 "))
    rule = FormRule(Form("2,2", (Line(2, "\n"), Line(2, "\n"))), vocab, CPU)
    assert rule.steps(0) == 3 and rule.endings[0] == [vocab.char_to_idx[" "]]


def test_acrostic_fixes_only_the_first_character_of_its_lines() -> None:
    rule = AcrosticRule("春月", VOCAB, CPU)
    assert allowed_chars(mask(rule, 1, 0, 0)[0]) == ["春"]
    assert allowed_chars(mask(rule, 1, 1, 0)[0]) == ["月"]
    assert mask(rule, 1, 1, 1).all() and mask(rule, 1, 2, 0).all()


def test_rhyme_keeps_each_rows_class_and_never_repeats_a_rhyme() -> None:
    form = PRESETS["七言绝句"]
    rule = RhymeRule(rhyme_table("pingshui"), VOCAB, form, (0, 1, 3), 2, CPU, level_only=True)
    assert mask(rule, 2, 0, 5).all()  # not a rhyme slot
    first = mask(rule, 2, 0, 6)
    # 平 classes with at least three characters here: 一東 (東風中紅) and 七陽 (陽光長)
    assert allowed_chars(first[0]) == list("東風中紅陽光長")
    rule.push(torch.tensor([VOCAB.char_to_idx["風"], VOCAB.char_to_idx["光"]]), At(0, 6))
    second = mask(rule, 2, 1, 6)
    assert allowed_chars(second[0]) == list("東中紅")
    assert allowed_chars(second[1]) == list("陽長")
    rule.push(torch.tensor([VOCAB.char_to_idx["中"], VOCAB.char_to_idx["長"]]), At(1, 6))
    assert allowed_chars(mask(rule, 2, 3, 6)[1]) == ["陽"]


def test_tone_pattern_follows_the_start_of_each_row() -> None:
    table = rhyme_table("pingshui")
    form = PRESETS["五言绝句"]
    rule = ToneRule(table, VOCAB, form, (1, 3), 2, CPU)
    start = allowed_chars(mask(rule, 1, 0, 1)[0])
    assert all(len(table.tones(ch)) == 1 for ch in start) and "中" not in start  # 中: both
    rule.push(torch.tensor([VOCAB.char_to_idx["春"], VOCAB.char_to_idx["月"]]), At(0, 1))
    # line 2, position 2: 仄 after 平起 (對), 平 after 仄起
    second = mask(rule, 2, 1, 1)
    assert "春" not in allowed_chars(second[0]) and "月" in allowed_chars(second[0])
    assert "月" not in allowed_chars(second[1]) and "春" in allowed_chars(second[1])
    assert "中" in allowed_chars(second[0]) and "中" in allowed_chars(second[1])
    assert mask(rule, 2, 1, 2).all()  # position 3 is free
