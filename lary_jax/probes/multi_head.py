"""The five attentive probes, trained side by side in one jitted step.

Each head has its own parameters and its own AdamW (upstream's (lr, weight
decay) pairs), all heads see the same batch. Parameters are stacked on a
leading head axis and the step runs the heads' forward and backward with
`lax.map`: `head_batch` heads at a time (1 = one after another, the least
memory; 5 = all vmapped, which holds five heads' activations at once); the
AdamW updates then run as one pass over the stacks. The batch is split over the
`data` mesh axis; the global batch is fixed, so the numbers do not depend on
how many devices computed them.

A batch too big for the device runs as micro-batches instead
(`fitted_steps`): `make_grad_step` adds each one's gradients to running
sums, `make_update_step` applies AdamW to the sums once per batch.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lary_jax.errors import LaryError
from lary_jax.probes import attentive_probe
from lary_jax.upstream_protocol import HEADS  # upstream's five probes

TOP_K = 5
Params = Any  # a stacked nnx.State: every leaf [num_heads, ...]


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """What one training step does (config section `classify`)."""

  heads: tuple[tuple[float, float], ...] = HEADS
  total_steps: int = 1  # the cosine reaches 0 at the last step
  label_smoothing: float = 0.1
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  compute_dtype: str = "bfloat16"
  head_batch: int = 1


def compute_dtype(name: str) -> Any:
  """"auto" -> bfloat16 on GPU/TPU, float32 on CPU (where bf16 is slower)."""
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  if name not in ("float32", "bfloat16"):
    raise LaryError(f"compute_dtype {name!r}: expected auto, float32 or "
                    "bfloat16")
  return getattr(jnp, name)


def lr_scale(step: jax.Array, total_steps: int) -> jax.Array:
  """Cosine factor of update `step` (0-based): 1 -> 0, no warm-up.

  Upstream advances its scheduler before each update, so update s uses
  the value at (s + 1) / total_steps and the last update's is exactly 0.
  """
  # Not optax.cosine_decay_schedule: it computes (pi * s) / T, not
  # pi * (s / T), so its floats may differ from the runs made so far.
  progress = jnp.minimum(step + 1, total_steps) / total_steps
  return 0.5 * (1.0 + jnp.cos(jnp.pi * progress))


def init_heads(config: attentive_probe.Config, num_heads: int, seed: int,
               dtype: Any = jnp.float32) -> tuple[nnx.GraphDef, Params]:
  """Draws `num_heads` probes and stacks their parameters.

  Head h is `AttentiveProbe(config, rngs=nnx.Rngs(params=fold_in(key(seed),
  h)))`, drawn in one jitted call: the same parameters, bit for bit, as
  building each head op by op, in one compilation instead of one per
  primitive and shape.

  Returns:
    (graphdef computing in `dtype`, parameters [num_heads, ...] float32).
  """
  return graphdef_for(config, dtype), _draw_heads(config, num_heads, seed)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _draw_heads(config: attentive_probe.Config, num_heads: int,
                seed: jax.Array) -> Params:
  keys = jax.vmap(jax.random.fold_in, (None, 0))(
      jax.random.key(seed), jnp.arange(num_heads))
  return jax.vmap(lambda key: nnx.state(attentive_probe.AttentiveProbe(
      config, rngs=nnx.Rngs(params=key))))(keys)


def graphdef_for(config: attentive_probe.Config, dtype: Any) -> nnx.GraphDef:
  """The graphdef of a probe computing in `dtype` (no parameters drawn)."""
  model = nnx.eval_shape(lambda: attentive_probe.AttentiveProbe(
      config, dtype=dtype, rngs=nnx.Rngs(0)))
  return nnx.split(model)[0]


def _adamw(options: StepOptions, lr: jax.Array, wd: jax.Array
           ) -> optax.GradientTransformation:
  # Decay on every parameter, as upstream (one param group per head).
  return optax.adamw(lr, b1=options.b1, b2=options.b2, eps=options.eps,
                     weight_decay=wd)


def init_optimizer(params: Params, options: StepOptions) -> Any:
  """Stacked AdamW states, one per head."""
  return jax.vmap(lambda p: _adamw(options, 0.0, 0.0).init(p))(params)


def loss_and_logits(graphdef: nnx.GraphDef, params: Any, features: jax.Array,
                    labels: jax.Array, label_smoothing: float,
                    batch_size: int | None = None
                    ) -> tuple[jax.Array, jax.Array]:
  """Label-smoothed cross-entropy of one head summed over the examples and
  divided by `batch_size` (default: the mean), and its logits.

  A micro-batch of a larger batch divides by the whole batch's size, so
  that its gradients add up to the big batch's.
  """
  logits = nnx.merge(graphdef, params)(features)
  targets = optax.smooth_labels(
      jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  losses = optax.softmax_cross_entropy(logits, targets)
  return losses.sum() / (batch_size or losses.shape[0]), logits


def _head_gradients(graphdef, options: StepOptions, p, features, labels,
                    batch_size: int):
  """One head on (a micro-batch of) a batch: its share of the mean loss
  and its gradients, the count of right answers, whether all is finite."""
  (loss, logits), grads = jax.value_and_grad(
      loss_and_logits, argnums=1, has_aux=True)(
          graphdef, p, features, labels, options.label_smoothing, batch_size)
  finite = jnp.isfinite(loss) & jnp.isfinite(logits).all()
  correct = (logits.argmax(-1) == labels).sum()
  return grads, loss, correct, finite


def _head_update(options: StepOptions, p, state, lr, wd, scale, grads,
                 finite):
  """One head's AdamW update; a head with a non-finite loss keeps its
  parameters and state (upstream skips that update)."""
  # Not optax.apply_if_finite: it tests the gradients, not upstream's loss
  # and logits, wraps the state (old checkpoints would not restore) and
  # applies a non-finite update after max_consecutive_errors.
  updates, new_state = _adamw(options, lr * scale, wd).update(grads, state, p)
  new_p = optax.apply_updates(p, updates)
  keep = lambda new, old: jax.tree.map(
      lambda a, b: jnp.where(finite, a, b), new, old)
  return keep(new_p, p), keep(new_state, state)


def _head_hyperparameters(options: StepOptions) -> tuple[jax.Array, ...]:
  if options.total_steps < 1:
    raise LaryError(f"total_steps {options.total_steps}: expected >= 1")
  return (jnp.asarray([h[0] for h in options.heads], jnp.float32),
          jnp.asarray([h[1] for h in options.heads], jnp.float32))


def make_train_step(graphdef: nnx.GraphDef, options: StepOptions
                    ) -> Callable[..., tuple[Any, ...]]:
  """The jitted step on a whole batch.

  step(params, opt_state, step, features, labels) ->
      (params, opt_state, loss [H], correct [H], finite [H])

  A head whose loss or logits are not finite skips its update (upstream
  skips it too) and says so in `finite`.
  """
  return jax.jit(make_step_fn(graphdef, options), donate_argnums=(0, 1))


def make_step_fn(graphdef: nnx.GraphDef, options: StepOptions
                 ) -> Callable[..., tuple[Any, ...]]:
  """`make_train_step`'s function before jit (to run inside a scan)."""
  lrs, wds = _head_hyperparameters(options)

  def step_fn(params, opt_state, step, features, labels):
    grads, loss, correct, finite = _map_heads(
        lambda p: _head_gradients(graphdef, options, p, features, labels,
                                  features.shape[0]),
        params, _head_batch(options, len(options.heads)))
    # AdamW once over the stacked heads, outside the map: inside it, each
    # head's parameters and moments were sliced out of the stacks and
    # written back (a few percent of the protocol's LAM-shaped step).
    new_params, new_state = _stacked_update(
        options, params, opt_state, lrs, wds,
        lr_scale(step, options.total_steps), grads, finite)
    return new_params, new_state, loss, correct, finite

  return step_fn


def _stacked_update(options: StepOptions, params, opt_state, lrs, wds, scale,
                    grads, finite):
  """`_head_update` of every head at once ([H, ...] stacks)."""
  update = lambda p, s, lr, wd, g, f: _head_update(options, p, s, lr, wd,
                                                   scale, g, f)
  return jax.vmap(update)(params, opt_state, lrs, wds, grads, finite)


def zero_sums(params: Params) -> dict[str, Any]:
  """What `make_grad_step` adds up over micro-batches, all zero: each
  head's gradients, share of the loss, right answers, and finiteness."""
  heads = jax.tree.leaves(params)[0].shape[0]
  return {"grads": jax.tree.map(jnp.zeros_like, params),
          "loss": jnp.zeros((heads,), jnp.float32),
          "correct": jnp.zeros((heads,), jnp.int32),
          "finite": jnp.ones((heads,), bool)}


def make_grad_step(graphdef: nnx.GraphDef, options: StepOptions,
                   batch_size: int) -> Callable[..., Any]:
  """The jitted gradients of one micro-batch of a `batch_size` batch,
  added to the running sums (donated; see `zero_sums`).

  grad_step(params, sums, features, labels) -> sums
  """

  def step_fn(params, sums, features, labels):
    def one_head(args):
      p, acc = args
      grads, loss, correct, finite = _head_gradients(
          graphdef, options, p, features, labels, batch_size)
      return {"grads": jax.tree.map(jnp.add, acc["grads"], grads),
              "loss": acc["loss"] + loss,
              "correct": acc["correct"] + correct.astype(jnp.int32),
              "finite": acc["finite"] & finite}

    return _map_heads(one_head, (params, sums),
                     _head_batch(options, len(options.heads)))

  return jax.jit(step_fn, donate_argnums=(1,))


def make_update_step(options: StepOptions) -> Callable[..., tuple[Any, ...]]:
  """The jitted AdamW update from a whole batch's sums.

  update(params, opt_state, step, sums) ->
      (params, opt_state, loss [H], correct [H], finite [H], zeroed sums)

  The sums come back zeroed in their own (donated) buffers, ready for the
  next batch.
  """
  lrs, wds = _head_hyperparameters(options)

  def step_fn(params, opt_state, step, sums):
    params, opt_state = _stacked_update(
        options, params, opt_state, lrs, wds,
        lr_scale(step, options.total_steps), sums["grads"], sums["finite"])
    zeroed = jax.tree.map(jnp.zeros_like, sums)
    zeroed["finite"] = jnp.ones_like(sums["finite"])
    return (params, opt_state, sums["loss"], sums["correct"], sums["finite"],
            zeroed)

  return jax.jit(step_fn, donate_argnums=(0, 1, 3))


def make_eval_step(graphdef: nnx.GraphDef, num_classes: int,
                   head_batch: int = 1) -> Callable[..., jax.Array]:
  """step(params, features) -> top-k class ids [H, B, k], best first."""
  k = min(TOP_K, num_classes)

  def step_fn(params, features):
    def one_head(p):
      logits = nnx.merge(graphdef, p)(features)
      return jax.lax.top_k(logits, k)[1].astype(jnp.int32)
    num_heads = jax.tree.leaves(params)[0].shape[0]
    return _map_heads(one_head, params, min(max(head_batch, 1), num_heads))

  return jax.jit(step_fn)


def _map_heads(fn: Callable[[Any], Any], xs: Any, head_batch: int) -> Any:
  """`lax.map` of `fn` over the leading head axis, `head_batch` at a time.

  One head at a time is a plain `lax.map`: `lax.map(batch_size=1)` vmaps
  `fn` over a size-1 axis, and XLA:CPU runs those batched dots ~10% slower
  (the protocol's LAM-shaped step, 8.5 s -> 7.5 s).
  """
  return jax.lax.map(fn, xs,
                     batch_size=head_batch if head_batch > 1 else None)


def _head_batch(options: StepOptions, num_heads: int) -> int:
  if options.head_batch < 1:
    raise LaryError(f"head_batch {options.head_batch}: expected >= 1")
  return min(options.head_batch, num_heads)


def head_table(options: StepOptions) -> list[dict[str, float]]:
  """The heads' hyper-parameters, for results files."""
  return [{"lr": float(lr), "weight_decay": float(wd)}
          for lr, wd in options.heads]


def unstack(params: Params, head: int) -> Any:
  """One head's parameters out of the stack."""
  return jax.tree.map(lambda x: np.asarray(x[head]), params)
