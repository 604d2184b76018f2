"""The project's shared vocabulary: each fact here is defined once and imported everywhere.

Cluster types and their guidance strategy (docs/design.md "Cluster types"), the guidance
loss weights per strategy, and the panel schema defaults (the Kaggle layout of the built-in
data: id column, targets, window and anchor lengths). Hydra configs hold the tunable values
(conf/data/*.yaml, conf/loss/*.yaml); code defaults point to these constants, so a default
cannot drift between a config and the function it configures. Plain Python, no imports:
every layer may use it.
"""

from __future__ import annotations

# ---- cluster types and what each trains with --------------------------------------------
CLUSTER_TYPES: tuple[str, ...] = ("mean_reverting", "trending", "random_walk")

# type -> guidance strategy of the training loss (diffusion/losses.py)
STRATEGY: dict[str, str] = {
    "mean_reverting": "tv",
    "trending": "fourier",
    "random_walk": "balanced",
}

# strategy -> (w_tv, w_fourier), the relative weights of the two guidance terms
STRATEGY_WEIGHTS: dict[str, tuple[float, float]] = {
    "tv": (2.0, 0.0),
    "fourier": (0.0, 2.0),
    "balanced": (1.0, 1.0),
    "none": (0.0, 0.0),
}

STRATEGY_DESCRIPTION: dict[str, str] = {
    "tv": "mean-reverting: total-variation guidance loss, weight 2x",
    "fourier": "trending: Fourier high-frequency energy guidance loss, weight 2x",
    "balanced": "random walk: TV and Fourier guidance, 1x each",
}

# ---- panel schema defaults (conf/data/*.yaml give the same values) ----------------------
ID_COL = "date_id"
TARGETS: tuple[str, ...] = ("forward_returns", "risk_free_rate", "market_forward_excess_returns")
WINDOW_SIZE = 60  # rows per model window
ANCHOR_LEN = 10  # rows at a window's start whose mean sets its level (scale-free windows)
