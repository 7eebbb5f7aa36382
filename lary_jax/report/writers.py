"""The report's files: tables and charts -> report.md and report.html.

  `collect` (gather.py) -> tables.py's tables -> report.md (GitHub tables,
  image links) and report.html (one file: inline CSS, charts and the runs'
  PNGs as data URIs); each file written whole or not at all.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import os
import re

from lary_jax import workdir_layout as layout
from lary_jax.report import tables
from lary_jax.report.charts import bar_charts
from lary_jax.report.gather import collect
from lary_jax.report.gather import read_published
from lary_jax.report.leaderboard import CONTROL_BANNER
from lary_jax.report.leaderboard import Leaderboard
from lary_jax.report.leaderboard import NOT_PROTOCOL
from lary_jax.report.leaderboard import NOT_RECORDED
from lary_jax.report.leaderboard import Table


# -------------------------------------------------------------- markdown


def _md_cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def md_table(table: Table) -> list[str]:
  header, rows = table
  lines = ["| " + " | ".join(map(_md_cell, header)) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
  return lines


def _md_lines(board: Leaderboard, md_dir: str) -> list[str]:
  lines = ["# LARY results", ""]
  failures = tables.control_failures(board)
  if failures:
    lines += [f"> **{CONTROL_BANNER}**", ">"]
    lines += [f"> - {f}" for f in failures]
    lines.append("")
  lines += [f"Workdir `{board.workdir}`; written by `python -m lary_jax.main "
            "report`.", "", "How to read:", ""]
  lines += [f"- {t}" for t in tables.HOW_TO_READ]
  for _, title, table in tables.sections(board):
    lines += ["", f"## {title}", "", *md_table(table)]
  settings = tables.probe_settings(board)
  if settings:
    lines += ["", "## Probe settings", "", *md_table(settings)]
  notes = tables.config_notes(board)
  if notes:
    lines += ["", "## Config notes", ""]
    by_folder = {r.folder: r for r in board.runs}
    for folder, number in notes.items():
      run = by_folder[folder]
      lines.append(f"{number}. {run.task} {run.name}: "
                   + "; ".join(run.deviations))
  unmatched = board.unmatched_published()
  if unmatched:
    lines += ["", "## Published numbers with no run here", "",
              *md_table(tables.unmatched_table(unmatched))]
  if board.unfinished:
    lines += ["", "## Unfinished runs (seeds but no results.json)", ""]
    lines += [f"- `{f}`" for f in board.unfinished]
  lines += ["", "## Runs"]
  for run in board.runs:
    lines += ["", f"### {run.task}: {run.name}", "",
              "; ".join(tables.run_facts(run)) + ".", "",
              *md_table(tables.per_seed_table(run))]
    for table in (tables.per_source_table(run), tables.per_dim_table(run)):
      if table:
        lines += ["", *md_table(table)]
    for caption, rel in tables.run_images(run):
      if os.path.exists(os.path.join(board.workdir, rel)):
        target = os.path.relpath(os.path.join(board.workdir, rel), md_dir)
        lines += ["", f"![{caption}]({target.replace(os.sep, '/')})"]
  return lines + [""]


def write_text(path: str, text: str) -> None:
  # Whole file or nothing: a reader never sees half a report.
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def write_markdown(board: Leaderboard, path: str) -> None:
  """Writes the leaderboard as Markdown (GitHub tables, image links).

  Args:
    board: what `collect` read (with `published` filled in, if any).
    path: the .md file; image links are relative to its folder.
  """
  md_dir = os.path.dirname(os.path.abspath(path))
  write_text(path, "\n".join(_md_lines(board, md_dir)))


# ------------------------------------------------------------------ html


def _png_uri(png: bytes) -> str:
  return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: left; }
th { background: #f2f2f2; } tr:nth-child(even) td { background: #fafafa; }
td.warn { color: #a40000; } code { background: #f2f2f2; padding: 0 .2em; }
figure { display: inline-block; margin: .5em 1em .5em 0; }
figcaption { font-size: 12px; color: #555; } img { max-width: 100%; }
.wide { overflow-x: auto; }
.banner { background: #b00020; color: #fff; padding: .6em 1em;
          border-radius: 4px; margin: .5em 0 1em; }
"""


def _inline(text: str) -> str:
  """Escaped text with Markdown `code` spans as <code> (the .md's markup)."""
  return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _html_table(table: Table) -> str:
  header, rows = table
  head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
  body = []
  for row in rows:
    cells = "".join(
        f'<td class="warn">{_inline(c)}</td>' if c.startswith(
            (NOT_PROTOCOL, NOT_RECORDED)) else f"<td>{_inline(c)}</td>"
        for c in row)
    body.append(f"<tr>{cells}</tr>")
  return (f'<div class="wide"><table><thead><tr>{head}</tr></thead>'
          f"<tbody>{''.join(body)}</tbody></table></div>")


def _figure(caption: str, png: bytes) -> str:
  return (f'<figure><img alt="{html.escape(caption)}" '
          f'src="{_png_uri(png)}"><figcaption>{html.escape(caption)}'
          "</figcaption></figure>")


def _html_body(board: Leaderboard) -> list[str]:
  parts = ["<h1>LARY results</h1>"]
  failures = tables.control_failures(board)
  if failures:
    parts.append(f'<div class="banner"><strong>{html.escape(CONTROL_BANNER)}'
                 "</strong><ul>" + "".join(
                     f"<li>{html.escape(f)}</li>" for f in failures)
                 + "</ul></div>")
  parts += [f"<p>Workdir <code>{html.escape(board.workdir)}</code>; written "
            "by <code>python -m lary_jax.main report</code>.</p>",
            "<h2>How to read</h2><ul>"
            + "".join(f"<li>{_inline(t)}</li>" for t in tables.HOW_TO_READ)
            + "</ul>"]
  charts = bar_charts(board)
  sections = tables.sections(board)
  for task, title, table in sections:
    parts += [f"<h2>{html.escape(title)}</h2>", _html_table(table)]
    if title == [t for k, t, _ in sections if k == task][-1]:
      parts += [_figure(c, png) for t, c, png in charts if t == task]
  settings = tables.probe_settings(board)
  if settings:
    parts += ["<h2>Probe settings</h2>", _html_table(settings)]
  notes = tables.config_notes(board)
  if notes:
    by_folder = {r.folder: r for r in board.runs}
    items = "".join(
        f"<li value=\"{n}\">{html.escape(by_folder[f].task)} "
        f"{html.escape(by_folder[f].name)}: "
        f"{html.escape('; '.join(by_folder[f].deviations))}</li>"
        for f, n in notes.items())
    parts.append(f"<h2>Config notes</h2><ol>{items}</ol>")
  unmatched = board.unmatched_published()
  if unmatched:
    parts += ["<h2>Published numbers with no run here</h2>",
              _html_table(tables.unmatched_table(unmatched))]
  if board.unfinished:
    parts.append("<h2>Unfinished runs (seeds but no results.json)</h2><ul>"
                 + "".join(f"<li><code>{html.escape(f)}</code></li>"
                           for f in board.unfinished) + "</ul>")
  parts.append("<h2>Runs</h2>")
  for run in board.runs:
    parts += [f"<h3>{html.escape(run.task)}: {html.escape(run.name)}</h3>",
              f"<p>{_inline('; '.join(tables.run_facts(run)))}.</p>",
              _html_table(tables.per_seed_table(run))]
    for table in (tables.per_source_table(run), tables.per_dim_table(run)):
      if table:
        parts.append(_html_table(table))
    for caption, rel in tables.run_images(run):
      path = os.path.join(board.workdir, rel)
      if os.path.exists(path):
        with open(path, "rb") as f:
          parts.append(f"<details><summary>{html.escape(caption)}</summary>"
                       f"{_figure(caption, f.read())}</details>")
  return parts


def write_html(board: Leaderboard, path: str) -> None:
  """Writes the leaderboard as one self-contained HTML file.

  Inline CSS; the bar charts (drawn here) and the runs' confusion-matrix
  and trajectory PNGs are embedded as base64 data URIs, so the file can be
  mailed or opened offline.

  Args:
    board: what `collect` read (with `published` filled in, if any).
    path: the .html file.
  """
  page = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
          "<title>LARY results</title>", f"<style>{_CSS}</style>",
          "</head><body>", *_html_body(board), "</body></html>", ""]
  write_text(path, "\n".join(page))


def write(workdir: str, published: str | None = None) -> tuple[str, str]:
  """Collects every result in `workdir`, writes report.md and report.html.

  Args:
    workdir: the folder that `classify` and `regress` wrote into.
    published: optional CSV of published numbers (module docstring).

  Returns:
    The paths of report.md and report.html (in `workdir`).
  """
  board = collect(workdir)
  if published:
    board = dataclasses.replace(board, published=read_published(published))
  md_path, html_path = layout.report_files(workdir)
  write_markdown(board, md_path)
  write_html(board, html_path)
  return md_path, html_path
