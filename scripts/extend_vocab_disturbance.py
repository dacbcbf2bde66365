"""How much ``--init-from RUN --extend-vocab`` moves the old characters' probabilities.

For each RUN given, the script builds the model a fine-tuned run starts from, exactly as
``charlstm train CORPUS --init-from RUN --extend-vocab`` builds it at step 0 (same vocabulary
rule, same seed, same new rows; in a temporary run directory, nothing kept), and scores a
text of the old characters with both models. It prints, over every position of the text
and every old character (V of them):

- ``max |dlog p|``: the largest change of any old character's log-probability;
- ``KL``: KL(before || after) over the old characters, nats per position: the expected
  extra loss on text drawn from the old model;
- ``text dloss``: how much the text's own next characters' loss grows (nats per character).

For an adaptive softmax it also prints the bound ``log(1 + k / n)`` (k new characters
joining the n old ones of the last tail cluster) that no tail character's change exceeds,
and the largest change of a shortlist character (zero).

The text is the last ``--val-fraction`` of ``--text`` (after ``--max-chars``, as a run
reads its corpus), its first ``--chars`` characters; characters the old model lacks are
left out.

    python scripts/extend_vocab_disturbance.py ../shared/data/jaychou_lyrics.txt.zip \\
        runs/tang-adaptive runs/tang-full \\
        --text ../shared/data/tang_poems.txt.zip --max-chars 500000 --chars 20000
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch

from charlstm.api import load_model
from charlstm.data.corpus import read_text
from charlstm.model import CharLSTM
from charlstm.training.start import prepare_training


def disturbance(before: CharLSTM, after: CharLSTM, indices: torch.Tensor) -> dict[str, float]:
    """The three measures above for ``indices`` (T,), old characters, read as one sequence."""
    with torch.no_grad():
        old = before.eval().log_probs(indices.view(-1, 1))[0][:, 0]  # (T, V)
        new = after.eval().log_probs(indices.view(-1, 1))[0][:, 0, : old.shape[1]]  # (T, V)
    change = new - old
    measures = {
        "max |dlog p|": float(change.abs().max()),
        "KL": float((old.exp() * -change).sum(-1).mean()),
        "text dloss": float(-change[:-1].gather(1, indices[1:].view(-1, 1)).mean()),
    }
    if before.adaptive:
        cutoffs = after.config.cutoffs or []
        shortlist = before.head_order < cutoffs[0]
        new_chars = after.config.vocab_size - before.config.vocab_size
        in_last = int((before.head_order >= cutoffs[-1]).sum())
        measures["shortlist max |dlog p|"] = float(change[:, shortlist].abs().max())
        measures["bound log(1 + k/n)"] = math.log(1 + new_chars / in_last)
    return measures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring for the measures.",
    )
    parser.add_argument("corpus", type=Path, help="The corpus to fine-tune on (new characters).")
    parser.add_argument("runs", type=Path, nargs="+", help="Run directories or checkpoints.")
    parser.add_argument("--text", type=Path, required=True, help="Text to score (.zip or .txt).")
    parser.add_argument("--max-chars", type=int, default=0, help="First N characters (0: all).")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="Last part scored.")
    parser.add_argument("--chars", type=int, default=20_000, help="Characters scored.")
    parser.add_argument("--seed", type=int, default=0, help="train's --seed (fresh rows).")
    args = parser.parse_args()

    text = read_text(args.text)
    if args.max_chars:
        text = text[: args.max_chars]
    text = text[int(len(text) * (1 - args.val_fraction)) :]
    for run in args.runs:
        base = load_model(run)
        kept = "".join(ch for ch in text if ch in base.vocab.char_to_idx)[: args.chars]
        with tempfile.TemporaryDirectory() as scratch:
            trainer = prepare_training(
                args.corpus,
                train_options={"seed": args.seed, "sample_every": 0},
                run_dir=Path(scratch) / "run",
                init_from=run,
                extend_vocab=True,
                log=lambda _: None,
                progress_bar=False,
            )
        grown = trainer.model_config
        print(
            f"{run}: softmax {grown.softmax}, vocabulary {len(base.vocab):,} -> "
            f"{grown.vocab_size:,}, cutoffs {grown.cutoffs}, {len(kept):,} characters scored"
        )
        measures = disturbance(base.model, trainer.model.cpu(), base.vocab.encode(kept))
        for name, value in measures.items():
            print(f"  {name:24} {value:.6f}")


if __name__ == "__main__":
    main()
