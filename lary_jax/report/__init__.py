"""The `report` command: every result in a workdir -> report.md and .html.

  <workdir>/classify/DATASET/MODEL/results.json            (+ seed_<s>/)
  <workdir>/regress/DATASET/MODEL/TYPE_MODE/results.json   (+ seed_<s>/)
  -> a `Leaderboard`: one `Run` per folder with its seeds' results and the
     settings in which it left the protocol (configs/default.py)
  -> report.md: tables that read in a terminal or on GitHub
  -> report.html: one file with the same tables, bar charts, confusion
     matrices, per-dimension MSE and trajectory plots (PNGs inlined)

Published numbers (`--published`) come from a CSV with a header row:

  task,dataset,model,metric,value[,split][,decoder]

  task     `classification` or `regression`
  dataset  our dataset name (human_1st, robot_1st, calvin, ...)
  model    our model name, as in the results folder
  metric   `top1` (classification; value in percent, as papers print it)
           or `mse` (regression; normalised actions)
  split    optional: `validation` (the seen validation set; the default)
           or `unseen`
  decoder  optional, regression: the run folder TYPE_MODE, such as
           `mlp_absolute`; left empty, the number stands beside every
           decoder of that dataset and model
"""

from lary_jax.report.charts import bar_chart
from lary_jax.report.gather import collect
from lary_jax.report.gather import deviations
from lary_jax.report.gather import read_published
from lary_jax.report.leaderboard import CLASSIFICATION
from lary_jax.report.leaderboard import CONTROL_BANNER
from lary_jax.report.leaderboard import CONTROL_CHECKS
from lary_jax.report.leaderboard import CONTROLS
from lary_jax.report.leaderboard import FLOOR_MARGIN_SE
from lary_jax.report.leaderboard import FLOORS
from lary_jax.report.leaderboard import Leaderboard
from lary_jax.report.leaderboard import METRIC
from lary_jax.report.leaderboard import NOT_PROTOCOL
from lary_jax.report.leaderboard import NOT_RECORDED
from lary_jax.report.leaderboard import PublishedKey
from lary_jax.report.leaderboard import REGRESSION
from lary_jax.report.leaderboard import Run
from lary_jax.report.leaderboard import SELECTIONS
from lary_jax.report.leaderboard import SPLIT_LABELS
from lary_jax.report.leaderboard import Table
from lary_jax.report.tables import control_failures
from lary_jax.report.tables import floor_gap
from lary_jax.report.tables import honest_cell
from lary_jax.report.tables import probe_settings
from lary_jax.report.tables import versus_floors
from lary_jax.report.writers import md_table
from lary_jax.report.writers import write
from lary_jax.report.writers import write_html
from lary_jax.report.writers import write_markdown
