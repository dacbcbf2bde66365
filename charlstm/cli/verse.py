"""``charlstm verse-check`` and the verse side of ``charlstm generate``.

Commands only; the work is in :mod:`charlstm.generation.verse`. No torch at import time:
a run's lines (``--checkpoint``) are loaded only when asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from charlstm.cli.common import AsJson, app, handle_errors
from charlstm.cli.display import table
from charlstm.cli.options import Given, settings_options
from charlstm.fields import SettingError, build
from charlstm.generation.verse.forms import VerseSettings, refuse_poem_ends, verse_from


def verse_request(given: dict[str, Any]) -> tuple[VerseSettings, dict[str, Any]]:
    """``generate``'s verse settings, and its settings for a poem: the form sets the length
    (``--length`` is refused here; ``--stop-at`` and ``--lines`` by
    :meth:`~charlstm.api.LanguageModel.generate_many`, as for every caller), and with no
    prefix the poem starts from nothing. The verse options without a form are refused."""
    verse = verse_from(given)
    if verse.free_rhyme:  # free-length lyrics: running text, ended by --length or --lines
        if not given.get("prefixes") and given.get("prefix_file") is None:
            return verse, {**given, "prefixes": [""]}
        return verse, given
    if not verse.active:
        return verse, given
    refuse_poem_ends(length=given.get("length"))  # its default cannot tell the library
    if not given.get("prefixes") and given.get("prefix_file") is None:
        return verse, {**given, "prefixes": [""]}
    return verse, given


def _percent(value: object) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}%"  # type: ignore[arg-type]


@app.command("verse-check")
@handle_errors
@settings_options(
    (VerseSettings, ("form", "line_lengths", "acrostic", "rhyme", "first_line_rhyme", "tone"))
)
def verse_check(
    file: Annotated[
        Path,
        typer.Argument(help="Poems separated by blank lines, or generate --format jsonl output."),
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="Count the lines found in this run's training text.",
            show_default=False,
        ),
    ] = None,
    corpus: Annotated[
        Path | None,
        typer.Option(
            "--corpus",
            help="Count the lines found in this text (.txt or .zip).",
            show_default=False,
        ),
    ] = None,
    as_json: AsJson = False,
    given: Given | None = None,
) -> None:
    """Check poems against a form: form, rhyme and tone compliance, lines copied from the
    training text, distinct-2; for each poem and overall. Works on any text. With or without
    a form, also the adjacent-line rhyme share under shisanzhe, xinyun and pingshui: of the
    neighbouring rows within a stanza (blank lines separate stanzas), the share whose last
    characters rhyme.

    Example: charlstm verse-check poems.txt --form 七言绝句 --checkpoint runs/tang
    """
    from charlstm.generation.verse.check import check_text, read_blocks

    settings = build(VerseSettings, given or {})
    if checkpoint is not None and corpus is not None:
        raise SettingError("give --checkpoint or --corpus, not both")
    if (checkpoint is not None or corpus is not None) and not settings.active:
        raise SettingError(
            "--checkpoint and --corpus count the copied lines of poems in a form: "
            "add {form} or {line_lengths}"
        )
    contains = None
    if checkpoint is not None:
        from charlstm.generation.verse.copies import training_lines
        from charlstm.storage import checkpoint as ckpt

        contains = training_lines(
            ckpt.load(ckpt.resolve(checkpoint, prefer="best.pt"))
        ).__contains__
    elif corpus is not None:
        from charlstm.data.corpus import read_text
        from charlstm.generation.verse.copies import LineSet

        contains = LineSet.from_text(read_text(corpus)).__contains__
    blocks = read_blocks(file)
    if not blocks:
        raise SettingError(f"no poems in {file}")
    report = check_text(blocks, settings, contains)
    if as_json:
        typer.echo(report.as_json())
        return
    overall = report.summary()
    shares = ", ".join(
        f"{system} {_percent(share)}" for system, share in report.adjacent_rhyme.items()
    )
    adjacent = f"adjacent lines rhyme: {shares} of {report.adjacent_pairs} pairs"
    if not settings.active:
        typer.echo(adjacent)
        return
    rows = [
        [
            str(number),
            "yes" if poem.form else "no",
            "-" if poem.acrostic is None else ("yes" if poem.acrostic else "no"),
            "-" if poem.rhyme is None else ("yes" if poem.rhyme else "no"),
            _percent(poem.tone),
            "-" if poem.copied is None else f"{poem.copied}/{len(poem.lines)}",
        ]
        for number, poem in enumerate(report.poems, start=1)
    ]
    typer.echo(table(["poem", "form", "acrostic", "rhyme", "tone", "copied"], rows))
    typer.echo(
        f"{overall['poems']} poems: form {_percent(overall['form'])}, acrostic "
        f"{_percent(overall['acrostic'])}, rhyme {_percent(overall['rhyme'])} "
        f"({settings.rhyme_system()}), tone {_percent(overall['tone'])} of "
        f"{overall['tone_positions']} positions, lines copied {_percent(overall['copied'])}, "
        f"distinct-2 {float(overall['distinct_2']):.3f}"  # type: ignore[arg-type]
    )
    typer.echo(adjacent)
