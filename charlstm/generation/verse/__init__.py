"""Verse: forms, acrostics, rhyme and tone, kept exactly while the model writes.

- :mod:`~charlstm.generation.verse.forms`: the forms as templates (presets 五言绝句, 七言绝句,
  五言律诗, 七言律诗 and free line lengths), the tone patterns, and the settings
  (:class:`~charlstm.generation.verse.forms.VerseSettings`; no torch);
- :mod:`~charlstm.generation.verse.rhyme`: rhyme classes and tones under 平水韵, 中华新韵, 十三辙;
- :mod:`~charlstm.generation.verse.constraints`: one rule per constraint (form, acrostic, rhyme,
  tone), each an entry of the engine's list of logits rules;
- :mod:`~charlstm.generation.verse.decoder`: a poem as a group of the generation engine
  (:class:`~charlstm.generation.verse.decoder.VerseGroup`: each line's candidates, the best
  kept at its end; a request with ``verse`` set is written by it);
- :mod:`~charlstm.generation.verse.copies`: the training text's lines, for the copy filter;
- :mod:`~charlstm.generation.verse.check`: the checker (``charlstm verse-check``), on any text.

May import what :mod:`charlstm.generation` may. ``forms``, ``rhyme`` and ``check`` import no
torch, so that the command line can read the settings without it.
"""
