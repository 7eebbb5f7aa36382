"""The package's layers, read from the source: imports point one way, down.

  5 entry      main, commands, benchmark_run
  4 stages     extract, upstream_npz, report, probes.classify/regress,
               lams.train_lam
  3 catalogue  encoders.registry (and the `encoders` package that fronts it)
  2 domains    data, sim, encoders' model files, lams, probes
  1 blocks     nn, the weights library, atomic I/O, feature store, run claim
               and checkpoints, metrics, mesh, errors, options (config_args,
               command_args), workdir layout, result keys, ...

Every `import` of lary_jax counts, at module level and inside functions. A
module may import its own layer or a lower one; within the domains, each
package only the ones listed in DOMAIN_IMPORTS; and no import cycle at all.
A new module must be given a layer here (the test names it until it is).
"""

from __future__ import annotations

import ast
import os
import re

import pytest

PACKAGE = "lary_jax"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), PACKAGE)
CONFIGS = os.path.join(os.path.dirname(ROOT), "configs")  # lary_jax.configs

BLOCKS, DOMAINS, CATALOGUE, STAGES, ENTRY = 1, 2, 3, 4, 5
# (regex over the dotted module name, layer): the first match wins.
LAYERS = (
    (r"lary_jax\.(main|__main__|commands|benchmark_run)", ENTRY),
    (r"lary_jax\.(extract|upstream_npz|report(\..+)?)", STAGES),
    (r"lary_jax\.probes\.(classify|regress)", STAGES),
    (r"lary_jax\.lams\.train_lam", STAGES),
    (r"lary_jax\.encoders(\.registry)?", CATALOGUE),
    (r"lary_jax\.encoders\.(convert|config_dict)", BLOCKS),
    (r"lary_jax\.(data|sim|encoders|lams|probes)(\..+)?", DOMAINS),
    (r"lary_jax(\.(nn|configs)(\..+)?)?", BLOCKS),
    (r"lary_jax\.(errors|atomic_io|run_claim|run_checkpoints|feature_store"
     r"|metrics|mesh|names|progress|compilation|tensorboard_log"
     r"|torch_checkpoint|hub|upstream_protocol|config_args|command_args"
     r"|workdir_layout|result_keys|xla_options)", BLOCKS),
)
# Domain package -> the other domain packages its modules may import.
DOMAIN_IMPORTS = {
    "data": set(),
    "sim": {"data"},
    "encoders": {"data"},
    "lams": {"encoders", "data"},
    "probes": {"data"},
}
# Imports inside functions: at most this many, each with a `# why` comment
# on its line or the line above.
MAX_INNER_IMPORTS = 12


def layer(module: str) -> int | None:
  for pattern, number in LAYERS:
    if re.fullmatch(pattern, module):
      return number
  return None


def source_files() -> dict[str, str]:
  """Dotted module name -> file, for lary_jax and lary_jax.configs."""
  out = {}
  for top, name in ((ROOT, PACKAGE), (CONFIGS, f"{PACKAGE}.configs")):
    for d, _, files in os.walk(top):
      for f in files:
        if f.endswith(".py"):
          rel = os.path.relpath(os.path.join(d, f), top)[:-3]
          parts = [name] + [p for p in rel.split(os.sep) if p != "__init__"]
          out[".".join(parts)] = os.path.join(d, f)
  return out


def imports(module: str, path: str, modules: set[str]
            ) -> list[tuple[str, int, bool]]:
  """(imported lary_jax module, line, inside a function) of one file."""
  tree = ast.parse(open(path).read())
  inner = {id(sub) for node in ast.walk(tree)
           if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
           for sub in ast.walk(node)}
  is_package = path.endswith("__init__.py")
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = module.split(".")[:len(module.split(".")) - node.level
                                   + is_package]
        base = ".".join(parts + ([base] if base else []))
      names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
               for a in node.names]
    else:
      continue
    for name in names:
      while name and name not in modules:  # a name inside a module
        name = name.rpartition(".")[0]
      if name and name != module:
        found.append((name, node.lineno, id(node) in inner))
  return found


def graph() -> dict[str, list[tuple[str, int, bool]]]:
  files = source_files()
  return {m: imports(m, p, set(files)) for m, p in files.items()}


def upward_imports(edges: dict[str, list[tuple[str, int, bool]]]
                   ) -> list[str]:
  """Every import that points up a layer or across domains unasked."""
  wrong = []
  for module, targets in sorted(edges.items()):
    for target, line, _ in targets:
      here, there = layer(module), layer(target)
      if there > here:
        wrong.append(f"{module}:{line} (layer {here}) imports {target} "
                     f"(layer {there})")
      elif here == there == DOMAINS:
        a, b = module.split(".")[1], target.split(".")[1]
        if a != b and b not in DOMAIN_IMPORTS[a]:
          wrong.append(f"{module}:{line} ({a}) imports {target} ({b}); "
                       f"{a} may import {sorted(DOMAIN_IMPORTS[a])}")
  return wrong


def test_every_module_has_a_layer():
  missing = sorted(m for m in source_files() if layer(m) is None)
  assert not missing, f"give these modules a layer in LAYERS: {missing}"


def test_no_module_imports_a_layer_above_it():
  assert upward_imports(graph()) == []


def test_no_import_cycle():
  edges = {m: {t for t, _, _ in ts} for m, ts in graph().items()}
  state: dict[str, int] = {}  # 1 on the path, 2 done

  def visit(m: str, path: list[str]) -> list[str] | None:
    state[m] = 1
    for t in sorted(edges[m]):
      if state.get(t) == 1:
        return path + [m, t]
      if t not in state and (cycle := visit(t, path + [m])):
        return cycle
    state[m] = 2
    return None

  for m in sorted(edges):
    if m not in state:
      cycle = visit(m, [])
      assert cycle is None, " -> ".join(cycle[cycle.index(cycle[-1]):])


def test_package_init_imports_nothing_above_its_own_modules():
  # Importing any module of a package runs its __init__ first.
  files = source_files()
  for package, path in files.items():
    if not path.endswith("__init__.py"):
      continue
    lowest = min(layer(m) for m in files if m.startswith(package + "."))
    for target, line, inner in imports(package, path, set(files)):
      assert inner or layer(target) <= lowest, (
          f"{path}:{line} imports {target} (layer {layer(target)}) at import "
          f"time, above its own modules (layer {lowest})")


def test_imports_inside_functions_are_few_and_say_why():
  files = source_files()
  inner = []
  for module, path in sorted(files.items()):
    lines = open(path).read().splitlines()
    for _, line, is_inner in imports(module, path, set(files)):
      if is_inner:
        inner.append(f"{path}:{line}")
        said = lines[line - 1] + lines[line - 2] if line > 1 else lines[0]
        assert "# why" in said, f"{path}:{line}: say why it is not at the top"
  assert len(inner) <= MAX_INNER_IMPORTS, inner


@pytest.mark.parametrize("module, target, wrong", [
    ("lary_jax.nn.vit_layers", "lary_jax.encoders.dinov2", True),
    ("lary_jax.encoders.dinov2", "lary_jax.lams.lapa", True),
    ("lary_jax.probes.attentive_probe", "lary_jax.encoders.dinov2", True),
    ("lary_jax.lams.lapa", "lary_jax.encoders.registry", True),
    ("lary_jax.lams.lapa", "lary_jax.encoders.dinov2", False),
    ("lary_jax.extract", "lary_jax.feature_store", False),
])
def test_the_check_sees_an_upward_import(module, target, wrong):
  found = upward_imports({module: [(target, 1, False)]})
  assert bool(found) == wrong, found
