"""Verse against issue 27's targets: compliance, copies, naturalness, cost.

    OMP_NUM_THREADS=1 python scripts/bench_verse.py --tang /work/models/tang \\
        --jaychou /work/models/jaychou --json docs/verse-bench.json

For each classical form, ``--poems`` poems with an acrostic, rhyme (平水韵) and the tone
pattern, ``--candidates`` per line and the copy filter, checked by the checker
(:mod:`charlstm.generation.verse.check`): form, acrostic, rhyme and tone compliance, lines
found in the training text, distinct-2. Then:

- naturalness: a Kneser-Ney 5-gram fitted on tang_poems' training part (not the generator)
  scores the constrained poems, unconstrained samples of the same length at the same
  temperature (from the same context, a newline), and real held-out poems of the form (the
  corpus's last 10 %); perplexity per character, punctuation and newlines included, of
  the Chinese characters alone (the forced punctuation is easy to predict), and of the line
  breaks alone (，。 and newlines: whether the lines end where text ends them); the ratio
  constrained / unconstrained; and the constrained poems with one candidate a line (the
  masks alone, without the choice among candidates);
- cost: 32 七言律诗 with ``--candidates`` per line (copy filter on, its line set already
  stored) against 32 unconstrained samples of the same length, wall time and ratio;
- lyrics: the jaychou model, ``--line-lengths 7,7,7,7 --acrostic`` with 十三辙: compliance,
  and naturalness as for the forms, judged by a Kneser-Ney 5-gram fitted on the Jay Chou
  corpus's training part (``--jaychou-corpus``; the first 90 %, as the run's split): the
  lyrics against free samples of the same length, with one candidate a line, and real
  held-out lines (the corpus's last 10 %, in groups of four);
- free-length rhymed lyrics (``--free-lyrics``, the jaychou model alone): ``--rhyme
  shisanzhe`` with no form, ``--lyric-lines`` lines each: the share of lines in their
  stanza's class, the KN ratio against free samples of as many lines, the median line
  length against the corpus's:

      OMP_NUM_THREADS=1 python scripts/bench_verse.py --free-lyrics \\
          --jaychou /work/models/jaychou-lyrics --json docs/lyrics-bench.json
- the tables: the share of tang_poems' 七言绝句 whose lines 2 and 4 rhyme under charlstm's
  平水韵 classes, and their tone compliance.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

try:
    import charlstm  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from charlstm.api import LanguageModel, load_model
from charlstm.data.corpus import read_text, split_point
from charlstm.generation.verse.check import check_poems, distinct_2, poem_lines
from charlstm.generation.verse.copies import split_lines, training_lines
from charlstm.generation.verse.forms import PRESETS, VerseSettings, is_ideograph
from charlstm.ngram.kneser_ney import KneserNeyLM

ACROSTICS = {4: "春夏秋冬", 8: "春夏秋冬風花雪月"}
LYRICS_ACROSTIC = "天青色等"


def real_poems(text: str, form_name: str) -> list[list[str]]:
    form = PRESETS[form_name]
    poems = [poem_lines(block, form) for block in text.split("\n\n")]
    return [
        p
        for p in poems
        if len(p) == len(form.lines) and all(len(line) == form.lines[0].length for line in p)
    ]


def as_text(lines: list[str]) -> str:
    """A poem in the corpus's layout (XXXXX，XXXXX。 rows)."""
    rows = [f"{a}，{b}。" for a, b in zip(lines[::2], lines[1::2], strict=True)]
    return "\n".join(rows) + "\n"


#: The characters that end a line: a form's ，and 。, a newline (a row's, or a poem's).
BREAKS = frozenset("，。\n")


def perplexity(ngram: KneserNeyLM, texts: list[str], only: str = "all") -> float:
    """Per character over all ``texts`` (each read after a newline); ``only``: ``"all"``,
    ``"chinese"`` (the Chinese characters alone are scored) or ``"breaks"`` (the line
    breaks alone, :data:`BREAKS`: how natural the lines' ends are); the other characters
    are context only."""
    nll = count = 0.0
    keep = {"chinese": is_ideograph, "breaks": BREAKS.__contains__}.get(only)
    for text in texts:
        log_p = ngram.log_probs(text, history="\n")
        if keep is not None:
            log_p = log_p[np.array([keep(ch) for ch in text], dtype=bool)]
        nll, count = nll - float(log_p.sum()), count + len(log_p)
    return math.exp(nll / count)


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def classical(
    model: LanguageModel, args: argparse.Namespace, ngram: KneserNeyLM | None, heldout: str
) -> list[dict[str, object]]:
    contains = training_lines(model.checkpoint).__contains__
    rows = []
    for name, form in PRESETS.items():
        settings = VerseSettings(
            form=name, acrostic=ACROSTICS[len(form.lines)], candidates=args.candidates
        )
        texts, seconds = timed(
            lambda s=settings: model.generate_many(
                [""], num_samples=args.poems, verse=s, seed=args.seed, temperature=args.temperature
            )[0]
        )
        poems = [poem_lines(t, form) for t in texts]
        report = check_poems(poems, settings, contains).summary()
        row: dict[str, object] = {"form": name, "seconds": round(seconds, 1), **report}
        if ngram is not None:
            length = len(texts[0])
            free, _ = timed(
                lambda n=length: model.generate_many(
                    ["\n"], n, num_samples=args.poems, seed=args.seed, temperature=args.temperature
                )[0]
            )
            real = [as_text(p) for p in real_poems(heldout, name)][: args.poems]
            single = VerseSettings(form=name, acrostic=settings.acrostic, candidates=1)
            one = model.generate_many(
                [""],
                num_samples=args.poems,
                verse=single,
                seed=args.seed,
                temperature=args.temperature,
            )[0]
            for suffix, only in (("", "all"), ("_chinese", "chinese"), ("_breaks", "breaks")):
                row["ppl_constrained" + suffix] = perplexity(ngram, texts, only)
                row["ppl_one_candidate" + suffix] = perplexity(ngram, one, only)
                row["ppl_unconstrained" + suffix] = perplexity(ngram, free, only)
                row["ppl_real_heldout" + suffix] = perplexity(ngram, real, only)
                row["ppl_ratio" + suffix] = (
                    row["ppl_constrained" + suffix] / row["ppl_unconstrained" + suffix]
                )
            row["real_heldout_poems"] = len(real)
            row["distinct_2_unconstrained"] = distinct_2([list(split_lines(t)) for t in free])
            row["distinct_2_real_heldout"] = distinct_2([list(split_lines(t)) for t in real])
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
    return rows


def cost(model: LanguageModel, args: argparse.Namespace) -> dict[str, object]:
    settings = VerseSettings(form="七言律诗", candidates=args.candidates)
    training_lines(model.checkpoint)  # stored beside the run: built once, not per request
    model.generate_many([""], num_samples=2, verse=settings, seed=0)  # warm up
    texts, verse_seconds = timed(
        lambda: model.generate_many([""], num_samples=32, verse=settings, seed=args.seed)[0]
    )
    length = len(texts[0])
    _, free_seconds = timed(
        lambda: model.generate_many(["\n"], length, num_samples=32, seed=args.seed)[0]
    )
    row = {
        "what": f"32 七言律诗, {args.candidates} candidates a line, against 32 free samples",
        "chars": length,
        "verse_seconds": round(verse_seconds, 2),
        "free_seconds": round(free_seconds, 2),
        "ratio": verse_seconds / free_seconds,
    }
    print(json.dumps(row, ensure_ascii=False), flush=True)
    return row


def lyrics(model: LanguageModel, args: argparse.Namespace) -> dict[str, object]:
    settings = VerseSettings(
        line_lengths=[7, 7, 7, 7],
        acrostic=LYRICS_ACROSTIC,
        rhyme="shisanzhe",
        candidates=args.candidates,
    )

    def write(s: VerseSettings) -> list[str]:
        return model.generate_many(
            [""], num_samples=args.poems, verse=s, seed=args.seed, temperature=args.temperature
        )[0]

    texts, seconds = timed(lambda: write(settings))
    poems = [t.split("\n")[:-1] for t in texts]
    contains = training_lines(model.checkpoint).__contains__
    row = {"seconds": round(seconds, 1), **check_poems(poems, settings, contains).summary()}
    if not args.no_ngram:
        text = read_text(args.jaychou_corpus)
        cut = split_point(len(text), 0.1)
        ngram = KneserNeyLM(5).fit(text[:cut], model.vocab)
        one = write(dataclasses.replace(settings, candidates=1))
        free = model.generate_many(
            ["\n"],
            len(texts[0]),
            num_samples=args.poems,
            seed=args.seed,
            temperature=args.temperature,
        )[0]
        rows = [line for line in text[cut:].split("\n")[1:] if line]
        real = ["".join(line + "\n" for line in rows[i : i + 4]) for i in range(0, len(rows), 4)]
        for suffix, only in (("", "all"), ("_chinese", "chinese"), ("_breaks", "breaks")):
            row["ppl_constrained" + suffix] = perplexity(ngram, texts, only)
            row["ppl_one_candidate" + suffix] = perplexity(ngram, one, only)
            row["ppl_unconstrained" + suffix] = perplexity(ngram, free, only)
            row["ppl_real_heldout" + suffix] = perplexity(ngram, real[: args.poems], only)
            row["ppl_ratio" + suffix] = (
                row["ppl_constrained" + suffix] / row["ppl_unconstrained" + suffix]
            )
    row["example"] = texts[0]
    print(json.dumps(row, ensure_ascii=False), flush=True)
    return row


def free_lyrics(model: LanguageModel, args: argparse.Namespace) -> dict[str, object]:
    """Free-length rhymed lyrics (``--rhyme shisanzhe``, no form, ``--lines``
    ``args.lyric_lines``, the bounds' defaults from the run): the share of rhyming lines in
    their stanza's class (read in context, as verse-check reads a line), the KN-judged
    perplexity against free samples of the same number of lines, and the median line length
    against the corpus's."""
    from charlstm.generation.verse.rhyme import rhyme_table

    settings = VerseSettings(rhyme="shisanzhe", candidates=args.candidates)
    lines = args.lyric_lines

    def write(s: VerseSettings) -> list[str]:
        return model.generate_many(
            [""], 400, args.poems, verse=s, lines=lines, seed=args.seed,
            temperature=args.temperature,
        )[0]  # fmt: skip

    texts, seconds = timed(lambda: write(settings))
    table = rhyme_table("shisanzhe")
    in_class = rhyming = 0
    lengths = []
    for text in texts:
        stanza_class: frozenset[int] | None = None
        for line in text.split("\n"):
            if not line:
                stanza_class = None  # a blank line starts a stanza
                continue
            lengths.append(len(line))
            read = table.line_classes(line)
            stanza_class = read if stanza_class is None else stanza_class
            rhyming += 1
            in_class += bool(read & stanza_class)
    corpus = read_text(args.jaychou_corpus)
    cut = split_point(len(corpus), 0.1)
    real = [len(line.strip()) for line in corpus[:cut].split("\n") if line.strip()]
    row: dict[str, object] = {
        "samples": len(texts),
        "candidates": args.candidates,
        "seconds": round(seconds, 1),
        "rhyming_lines": rhyming,
        "in_stanza_class": in_class / rhyming,
        "median_line": statistics.median(lengths),
        "median_line_corpus": statistics.median(real),
    }
    free = model.generate_many(
        ["\n"], 400, args.poems, lines=lines, seed=args.seed, temperature=args.temperature
    )[0]
    free_lengths = [len(x) for t in free for x in t.split("\n") if x]
    row["median_line_free"] = statistics.median(free_lengths)
    if not args.no_ngram:
        ngram = KneserNeyLM(5).fit(corpus[:cut], model.vocab)
        for suffix, only in (("", "all"), ("_chinese", "chinese"), ("_breaks", "breaks")):
            row["ppl_rhymed" + suffix] = perplexity(ngram, texts, only)
            row["ppl_free" + suffix] = perplexity(ngram, free, only)
            row["ppl_ratio" + suffix] = row["ppl_rhymed" + suffix] / row["ppl_free" + suffix]
    row["example"] = texts[0]
    print(json.dumps(row, ensure_ascii=False), flush=True)
    return row


def tables(text: str) -> dict[str, object]:
    settings = VerseSettings(form="七言绝句", first_line_rhyme=False)
    poems = real_poems(text, "七言绝句")
    report = check_poems(poems, settings).summary()
    row = {"quatrains": len(poems), "lines_2_4_rhyme": report["rhyme"], "tone": report["tone"]}
    print(json.dumps(row, ensure_ascii=False), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tang", type=Path, default=None, help="run trained on tang_poems")
    parser.add_argument("--jaychou", type=Path, default=None, help="run trained on jaychou")
    parser.add_argument("--corpus", type=Path, default=Path("../shared/data/tang_poems.txt.zip"))
    parser.add_argument(
        "--jaychou-corpus", type=Path, default=Path("../shared/data/jaychou_lyrics.txt.zip")
    )
    parser.add_argument("--poems", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-ngram", action="store_true", help="skip the 5-gram (3.5 GB)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--free-lyrics", action="store_true", help="only free-length rhymed lyrics (--jaychou)"
    )
    parser.add_argument("--lyric-lines", type=int, default=8, help="lines of a free lyric")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.free_lyrics:
        row = free_lyrics(load_model(args.jaychou), args)
        if args.json is not None:
            args.json.write_text(json.dumps(row, ensure_ascii=False, indent=1) + "\n")
        return
    text = read_text(args.corpus)
    cut = split_point(len(text), 0.1)
    results: dict[str, object] = {"settings": {k: str(v) for k, v in vars(args).items()}}
    results["tables"] = tables(text)
    ngram = None
    if not args.no_ngram:
        model_vocab = load_model(args.tang).vocab
        ngram, seconds = timed(lambda: KneserNeyLM(5).fit(text[:cut], model_vocab))
        print(f"5-gram fitted on {cut:,} characters in {seconds:.0f} s", flush=True)
    tang = load_model(args.tang)
    heldout = text[cut:]
    heldout = heldout[heldout.index("\n\n") + 2 :]  # from the first whole poem
    results["classical"] = classical(tang, args, ngram, heldout)
    results["cost"] = cost(tang, args)
    if args.jaychou is not None:
        results["lyrics"] = lyrics(load_model(args.jaychou), args)
    if args.json is not None:
        args.json.write_text(json.dumps(results, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main()
