"""command_args: typed arguments read from absl's parsed flags."""

import copy
import dataclasses

from absl import flags as absl_flags

from lary_jax import command_args
from lary_jax import extract
from lary_jax import main
from lary_jax.configs import default
from lary_jax.probes import train_classifier


def _parsed(*argv: str) -> absl_flags.FlagValues:
  """main.py's flag definitions (copies: the global ones stay unparsed),
  parsed from `argv`."""
  values = absl_flags.FlagValues()
  for flag in main.flags.FLAGS.get_flags_for_module(main.__name__):
    values[flag.name] = copy.deepcopy(flag)
  values(["lary", *argv])
  return values


def test_fields_take_the_flags_of_their_names():
  args = command_args.from_flags(
      command_args.RegressArgs,
      _parsed("--model=pixels", "--dataset=calvin", "--seed=3",
              "--model_type=dit", "--stride=5"))
  assert args == command_args.RegressArgs(
      coordinator_address=None, num_processes=None, process_id=None,
      model="pixels", dataset="calvin", seeds=None, seed=3, seed_given=True,
      out=None, workdir="lary_workdir", tfds_dir=None, stride=5,
      model_type="dit", action_mode="absolute")


def test_given_says_whether_the_flag_was_on_the_command_line():
  # --seed=0 is the default's value, yet given: regress then keeps seed 0.
  given = command_args.from_flags(command_args.RegressArgs,
                                  _parsed("--seed=0"))
  absent = command_args.from_flags(command_args.RegressArgs, _parsed())
  assert (given.seed, given.seed_given) == (0, True)
  assert (absent.seed, absent.seed_given) == (0, False)


def test_a_field_without_a_flag_keeps_its_default():
  # `label` is run's own (no --label flag): extract files under --model.
  flags = _parsed("--model=pixels", "--dataset=calvin")
  args = command_args.from_flags(command_args.ExtractArgs, flags)
  assert (args.model, args.label, args.store_name) == ("pixels", None,
                                                       "pixels")
  renamed = dataclasses.replace(args, label="run_lam")
  assert (renamed.model, renamed.store_name) == ("pixels", "run_lam")


def test_every_field_of_every_command_is_a_flag_of_main():
  # A field that no flag backs would fail at the command, not here.
  flags = _parsed()
  for cls in (command_args.SimulateArgs, command_args.PrepareArgs,
              command_args.ExtractArgs, command_args.ClassifyArgs,
              command_args.RegressArgs, command_args.ReportArgs):
    args = command_args.from_flags(cls, flags)
    for field in dataclasses.fields(cls):
      name = field.name.removesuffix("_given")
      if field.default is dataclasses.MISSING:
        assert name in flags, (cls.__name__, name)
        if name == field.name:
          assert getattr(args, name) == flags[name].value, (cls, name)


def test_stage_options_come_from_their_config_section():
  config = default.get_config()
  options = command_args.from_config(extract.Options, config.extract)
  for field in dataclasses.fields(extract.Options):
    assert getattr(options, field.name) == config.extract[field.name]
  # `given` wins; a field the section lacks (prefetch) keeps its default.
  probe = command_args.from_config(train_classifier.Options, config.classify,
                                   epochs=3)
  assert probe.epochs == 3 and config.classify.epochs == 20
  assert probe.global_batch == config.classify.global_batch
  assert "prefetch" not in config.classify
  assert probe.prefetch == train_classifier.Options().prefetch
