"""The demo corpus: original lyrics written for this project, shipped inside the package.

``charlstm train`` with no corpus trains on it. It is package data of :mod:`charlstm.data`
(``charlstm/data/demo_lyrics.zip``), found through :mod:`importlib.resources`, so the same
call finds it from a source checkout, an editable install and an installed wheel, whatever
the working directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from charlstm.errors import CharLSTMError

DEMO_CORPUS_NAME = "demo_lyrics.zip"


def demo_corpus() -> Path:
    """The demo corpus's path on disk.

    Raises :class:`CharLSTMError` when the installation lacks it (a package built without
    its data files) or holds it only inside an archive (a zipped import).
    """
    resource = resources.files(__package__) / DEMO_CORPUS_NAME
    if not resource.is_file():
        raise CharLSTMError(
            f"no corpus given and this installation of charlstm lacks its demo corpus "
            f"({DEMO_CORPUS_NAME}); pass a corpus: charlstm train CORPUS.zip"
        )
    if not isinstance(resource, Path):
        raise CharLSTMError(
            f"no corpus given and the demo corpus is inside an archive ({resource}); "
            "pass a corpus: charlstm train CORPUS.zip"
        )
    return resource
