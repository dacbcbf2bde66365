"""Named settings for common cases (``charlstm train --preset NAME``).

A preset gives values to settings of :class:`~charlstm.config.ModelConfig` and
:class:`~charlstm.config.TrainConfig` by field name; options given on the command line
override them. Measured figures for each are in docs/quality.md.
"""

from __future__ import annotations

from typing import Any

#: Named settings for common cases (``--preset``); explicit options override them.
#: Measured figures for each are in docs/quality.md.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Lyrics-sized text (tens of thousands of characters, thousands of distinct ones): a
    # tied 1x768 LSTM with the AWD-LSTM regularisers turned up (variational dropout 0.7,
    # DropConnect 0.6 on the recurrent weights, embedding dropout 0.4), label smoothing 0.2,
    # AdamW and a cosine schedule, and a Kneser-Ney 6-gram teacher (charlstm.ngram.teacher)
    # supplying half of every training target; the model predicts with the LSTM
    # interpolated with a 6-gram at weight 0.25 (charlstm.ngram.mixture). Tuned on a split inside
    # jaychou's training text; jaychou: held-out perplexity 167.8 (the LSTM alone 190.1,
    # the 6-gram 207.8), early-stopped after 22 epochs, 3.8 minutes of training on 2 CPU
    # cores (docs/quality.md). The 14-minute limit keeps a slower machine inside 15
    # minutes (the cosine then follows the clock).
    "small-corpus": {
        "model": {
            "hidden_size": 768,
            "tie_weights": True,
            "variational": True,
            "embed_dropout": 0.4,
            "dropout": 0.7,
            "weight_drop": 0.6,
        },
        "train": {
            "optimizer": "adamw",
            "lr": 2e-3,
            "weight_decay": 0.3,
            "label_smoothing": 0.2,
            "ngram_teacher": 6,
            "teacher_weight": 0.5,
            "ngram_mix": 6,
            "mix_weight": 0.25,
            "schedule": "cosine",
            "epochs": 40,
            "patience": 8,
            "num_steps": 70,
            "batch_size": 32,
            "time_limit": 14.0,
        },
    },
    # Megabyte-sized text (Tiny Shakespeare, tang_poems): a wider model, light dropout,
    # longer windows, and a 10-minute training budget on a CPU (--time-limit 0 lifts it).
    # nn.LSTM: at 1x512 its fused oneDNN layer runs a training step 1.2-1.5x as fast as the
    # scratch layer's per-step loop on a CPU (docs/benchmarks.md), and the preset needs no
    # scratch-only regulariser. With --softmax auto: the adaptive softmax for thousands of
    # distinct characters (tang_poems, V = 9,700: 3.3x the characters per second of
    # the full softmax on a CPU and a lower held-out loss after the same minutes,
    # docs/benchmarks.md), the full one for a small alphabet (Tiny Shakespeare, V = 65),
    # where the adaptive one saves nothing.
    "large-corpus": {
        "model": {
            "backend": "torch",
            "hidden_size": 512,
            "num_layers": 1,
            "dropout": 0.1,
            "softmax": "auto",
        },
        "train": {
            "optimizer": "adam",
            "lr": 2e-3,
            "schedule": "plateau",
            "epochs": 50,
            "patience": 3,
            "num_steps": 100,
            "batch_size": 64,
            "time_limit": 10.0,
        },
    },
    # Megabyte-sized text on a GPU: two 1024-unit scratch layers (CUDA-graph replay) with
    # the AWD-LSTM regularisers turned up (the model has 17M parameters for 1M characters),
    # long windows, and a 5-minute budget that the cosine schedule decays over.
    # Tiny Shakespeare: best held-out perplexity 4.06 (about 1.401 nats/char) on an H100; see
    # docs/quality.md.
    "large-corpus-gpu": {
        "model": {
            "backend": "scratch",
            "hidden_size": 1024,
            "num_layers": 2,
            "variational": True,
            "embed_dropout": 0.1,
            "dropout": 0.5,
            "weight_drop": 0.5,
        },
        "train": {
            "device": "cuda",
            "optimizer": "adamw",
            "lr": 2e-3,
            "weight_decay": 0.1,
            "schedule": "cosine",
            "epochs": 1000,
            "num_steps": 128,
            "batch_size": 128,
            "time_limit": 4.9,
        },
    },
}
