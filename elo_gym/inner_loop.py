"""Training one fresh optimizee with any optax optimizer, the way a user meets an LO.

One inner step (:func:`inner_step`) serves two drivers: :func:`train_curves`, one
jitted ``lax.scan`` over all steps (what ``scripts/evaluate.py`` and the PES agent's
periodic validation use), and :class:`HostLoop`, a Python loop of jitted steps for
models whose convolutions XLA:CPU runs slowly inside a compiled loop. Both record, per
step, the minibatch loss and the global norm of the update, and at evaluation points
the validation and test loss and accuracy and the global norm of the parameters: an LO
that learned "big constant steps" shows a flat update norm and a growing parameter
norm long before its loss turns.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

SPLITS = ("valid", "test")
Carry = tuple[Any, Any, Any]  # (params, model_state, optimizer state)


def eval_steps(steps: int, eval_every: int) -> list[int]:
    """Inner steps after which the model is evaluated: 0, every, 2 every, ..., H."""
    points = list(range(0, steps + 1, eval_every))
    return points if points[-1] == steps else [*points, steps]


def init_carry(task: Any, optimizer: optax.GradientTransformation, key: jax.Array):
    """(params, model_state, opt_state) of a fresh optimizee, and its batch key."""
    key_init, key_data = jax.random.split(key)
    params, model_state = task.init_with_state(key_init)
    return (params, model_state, optimizer.init(params)), key_data


def inner_step(
    task: Any,
    optimizer: optax.GradientTransformation,
    data: Any,
    key_data: jax.Array,
    carry: Carry,
    n: jax.Array,
) -> tuple[Carry, jax.Array, jax.Array]:
    """Step n: the batch ``fold_in(key_data, n)``, one gradient, one update.

    Returns (carry, minibatch loss at the params before the update, update norm).
    """
    params, model_state, opt_state = carry
    batch = task.sample_batch(data, jax.random.fold_in(key_data, n))
    (loss, model_state), grads = jax.value_and_grad(task.train_loss, has_aux=True)(
        params, model_state, batch
    )
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, model_state, opt_state), loss, optax.tree.norm(updates)


def evaluate_splits(task: Any, data: Any, params: Any, model_state: Any) -> dict:
    """``{split}_loss`` and ``{split}_accuracy`` of the valid and test splits, and
    ``param_norm``, the global norm of the params."""
    out = {}
    for split in SPLITS:
        metrics = task.evaluate(params, data, split, model_state=model_state)
        out[f"{split}_loss"] = metrics["loss"]
        out[f"{split}_accuracy"] = metrics["accuracy"]
    out["param_norm"] = optax.tree.norm(params)
    return out


def train_curves(
    task: Any,
    optimizer: optax.GradientTransformation,
    data: Any,
    key: jax.Array,
    *,
    steps: int,
    eval_every: int,
) -> dict[str, jax.Array]:
    """Trains one fresh optimizee for ``steps`` steps; pure and jittable (one seed).

    Args:
      task: the optimizee task (static).
      optimizer: any optax transformation (an LO's ``update`` needs params).
      data: the device-resident dataset.
      key: PRNG key; split into the init key and the batch-sequence key.
      steps: H, the number of inner steps.
      eval_every: steps between evaluations of the valid and test splits.

    Returns:
      ``train_loss`` and ``update_norm`` (H,): the minibatch loss at each step before
      its update, and that update's global norm; ``valid_loss``, ``valid_accuracy``,
      ``test_loss``, ``test_accuracy``, ``param_norm`` (E,) at :func:`eval_steps` (E
      of them, step 0 and step H included).
    """
    carry, key_data = init_carry(task, optimizer, key)

    def step(carry, n):
        new, loss, norm = inner_step(task, optimizer, data, key_data, carry, n)
        # Steps past H (in a last, partial chunk) leave the optimizee as it is.
        carry = jax.tree.map(lambda a, b: jnp.where(n < steps, a, b), new, carry)
        return carry, (loss, norm)

    def train_chunk(carry, start):
        return lax.scan(step, carry, start + jnp.arange(eval_every))

    def skip_chunk(carry, start):
        del start
        zeros = jnp.zeros(eval_every, jnp.float32)
        return carry, (zeros, zeros)

    def chunk(carry, start):
        # Evaluate, then train eval_every steps; the extra last iteration only
        # evaluates (its start is H; the predicate is unbatched under vmap, so this
        # stays a real branch). One copy of the step and of the evaluation in the
        # program keeps compilation short.
        evals = evaluate_splits(task, data, carry[0], carry[1])
        carry, per_step = lax.cond(start < steps, train_chunk, skip_chunk, carry, start)
        return carry, (per_step, evals)

    num_chunks = -(-steps // eval_every)
    starts = jnp.arange(num_chunks + 1) * eval_every
    _, ((losses, norms), evals) = lax.scan(chunk, carry, starts)
    return {
        "train_loss": losses.reshape(-1)[:steps],
        "update_norm": norms.reshape(-1)[:steps],
        **evals,
    }


class HostLoop:
    """:func:`train_curves` for all seeds, with the inner steps driven from Python.

    XLA's CPU backend runs convolutions inside a compiled loop far slower than alone
    (a ResNet-18 width-16 AdamW step: 0.60 s inside ``lax.scan``, 0.076 s as its own
    jitted call), so conv nets on CPU step in a Python loop: one jitted, seed-vmapped
    :func:`inner_step` per call, dispatched asynchronously (the losses stay on the
    device; the host never waits on a step). Same seeds, batches, evaluation points
    and outputs as :func:`train_curves`.

    Args:
      task: the optimizee task.
      build: hyper -> optax transformation (hyper: an LO's meta-parameters or an
        AdamW lr; traced, so one compilation serves every LO or lr).
      steps, eval_every: as for :func:`train_curves`.
    """

    def __init__(self, task: Any, build, *, steps: int, eval_every: int):
        self.steps, self.eval_every = steps, eval_every

        def init(hyper, keys):
            return jax.vmap(lambda k: init_carry(task, build(hyper), k))(keys)

        def step(hyper, data, carry, keys_data, n):
            def one(carry, key_data):
                return inner_step(task, build(hyper), data, key_data, carry, n)

            return jax.vmap(one)(carry, keys_data)

        def evaluate(data, carry):
            return jax.vmap(lambda c: evaluate_splits(task, data, c[0], c[1]))(carry)

        self._init = jax.jit(init)
        self._step = jax.jit(step, donate_argnums=2)
        self._evaluate = jax.jit(evaluate)

    def __call__(self, hyper: Any, data: Any, keys: jax.Array) -> dict[str, jax.Array]:
        carry, keys_data = self._init(hyper, keys)
        losses, norms, evals = [], [], []
        for n in range(self.steps):
            if n % self.eval_every == 0:
                evals.append(self._evaluate(data, carry))
            carry, loss, norm = self._step(hyper, data, carry, keys_data, jnp.int32(n))
            losses.append(loss)
            norms.append(norm)
        evals.append(self._evaluate(data, carry))
        curves = {k: jnp.stack([e[k] for e in evals], axis=1) for k in evals[0]}
        return {
            "train_loss": jnp.stack(losses, axis=1),
            "update_norm": jnp.stack(norms, axis=1),
            **curves,
        }
