"""charlstm: a character-level LSTM lyrics generator for the command line."""

__version__ = "0.1.0"

from charlstm.errors import CharLSTMError  # noqa: E402


def load_model(path=None, device: str = "cpu"):  # noqa: ANN001, ANN201 - re-exported lazily
    """Load a trained model; see :func:`charlstm.api.load_model`."""
    from charlstm.api import load_model as _load_model

    return _load_model(path, device)


__all__ = ["CharLSTMError", "__version__", "load_model"]
