"""Verse: forms, acrostics, rhyme and tone, kept exactly while the model writes.

- :mod:`~charlstm.generation.verse.forms`: the forms as templates (presets 五言绝句, 七言绝句,
  五言律诗, 七言律诗 and free line lengths), the tone patterns, and the settings
  (:class:`~charlstm.generation.verse.forms.VerseSettings`; no torch);
- :mod:`~charlstm.generation.verse.rhyme`: rhyme classes and tones under 平水韵, 中华新韵, 十三辙;
- :mod:`~charlstm.generation.verse.constraints`: one rule per constraint (form, acrostic, rhyme,
  tone), each masking the rows' distributions (N, V);
- :mod:`~charlstm.generation.verse.decoder`: the line-candidates decoder,
  :func:`~charlstm.generation.verse.decoder.generate_verse` (a model and its vocabulary) and
  :func:`~charlstm.generation.verse.decoder.generate_for` (a loaded
  :class:`~charlstm.api.LanguageModel`, with its copy filter);
- :mod:`~charlstm.generation.verse.copies`: the training text's lines, for the copy filter;
- :mod:`~charlstm.generation.verse.check`: the checker (``charlstm verse-check``), on any text.

May import what :mod:`charlstm.generation` may. ``forms``, ``rhyme`` and ``check`` import no
torch, so that the command line can read the settings without it.
"""
