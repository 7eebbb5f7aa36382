"""The keys of a probe's results.json, for the probes that write them and
the report that reads them.

  a seed's results.json      {SELECTION: {SPLIT: {METRIC: ...}, ...}, ...}
  the summary over seeds     {SEEDS: [...], FLOOR: {SPLIT: mse},
                              SELECTION: {SPLIT: {METRIC: {mean, std, n},
                                                  *_CI95, AT_*, CHANCE},
                                          PER_SEED: {seed: ...}}}

Old workdirs must still report: a key changes here only with a reader that
understands the old one.
"""

# A prepared dataset's splits, and the slice of train held out of training
# (the honest selection's ground).
TRAIN = "train"
VALIDATION = "validation"
UNSEEN = "unseen"
HOLDOUT = "train_holdout"

# How a seed's epoch (and head) is chosen: on the validation set itself, as
# upstream does, or on the held-out slice of train.
UPSTREAM_STYLE = "upstream_style"
HONEST = "honest"

# The summary over seeds.
SEEDS = "seeds"
PER_SEED = "per_seed"
FLOOR = "floor"  # regression: predict-the-train-mean MSE per split

# Metrics of a split, and what the summary adds to them.
TOP1 = "top1"
TOP5 = "top5"
MSE = "mse"
MSE_UNITS = "mse_units"  # in the actions' own units
TOP1_CI95 = "top1_ci95"
MSE_CI95 = "mse_ci95"
CHANCE = "chance"
AT_CHANCE = "at_chance"
AT_FLOOR = "at_floor"
