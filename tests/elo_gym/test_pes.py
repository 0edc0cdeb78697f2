"""The PES estimator's communication, read from the compiled outer step on two devices.

Pairs are independent for a whole truncation, so with a per-pair buffer the inner-step
loop must not move data between devices; a global reduction that creeps back into it
(a ``cond`` predicate or a metric over all copies) would cost one collective per inner
step, which is what kept two processes slower than one.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from elo_gym import pes

TRUNCATION = 3  # no other while loop of the outer step runs 3 times
COUNT = textwrap.dedent(
    f"""
    import functools, json
    import jax
    from elo_gym import pes
    from elo_gym.agents import pes_train

    assert len(jax.devices()) == 2
    counts = {{}}
    for scope in ("pair", "shared"):
        args = pes_train.make_args(
            num_pairs=2, truncation={TRUNCATION}, n_min=2, n_max=4,
            hidden_sizes=(4,), batch_size=8, hidden_size=4, init_lo="none",
            buffer_scope=scope,
        ).resolved()
        cfg, params = pes_train.pes_config(args)
        state = pes.shard_state(cfg, pes_train.init_state(args, cfg, params))
        step = functools.partial(
            pes.outer_step, cfg, pes_train.outer_optimizer(args)
        )
        hlo = jax.jit(step).lower(state, params).compile().as_text()
        counts[scope] = pes.count_collectives(hlo, cfg.truncation)
    print(json.dumps(counts))
    """
)


@pytest.fixture(scope="module")
def collectives() -> dict:
    """Collectives in the outer step compiled for two host devices, per scope."""
    flags = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    flags.append("--xla_force_host_platform_device_count=2")
    out = subprocess.run(
        [sys.executable, "-c", COUNT],
        env=dict(os.environ, XLA_FLAGS=" ".join(flags)),
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_pair_scope_inner_steps_never_communicate(collectives):
    assert collectives["pair"]["inner_step"] == 0, collectives
    # After the scan: the gradient and metric sums (float and integer: two
    # all-reduces) and the largest inner step.
    assert 1 <= collectives["pair"]["total"] <= 3, collectives


def test_shared_scope_gathers_in_the_inner_step(collectives):
    """The shared queue is replicated: the push masks are gathered on every inner
    step (the snapshots only on push steps), which the counter must see."""
    assert collectives["shared"]["inner_step"] >= 1, collectives
    assert collectives["shared"]["total"] > collectives["pair"]["total"], collectives


HLO = """\
HloModule m

%inner_body (p: (s32[], f32[2])) -> (s32[], f32[2]) {
  %x = f32[2]{0} parameter(0)
  %ar = f32[2]{0} all-reduce(%x), channel_id=1, to_apply=%add
  %t = (f32[2]{0}, /*index=1*/f32[]) tuple(%ar)
}

%cond (p: (s32[], f32[2])) -> pred[] {
  %c = pred[] constant(true)
}

ENTRY %main (a: f32[2]) -> f32[2] {
  %w = (s32[], f32[2]) while(%init), condition=%cond, body=%inner_body, \
backend_config={"known_trip_count":{"n":"7"}}
  %g = (f32[2]{0}, /*index=5*/f32[]) all-gather(%y), channel_id=2
  %s = f32[2]{0} all-reduce-start(%z), channel_id=3
  %d = f32[2]{0} all-reduce-done(%s)
}
"""


def test_count_collectives_reads_loops_and_async_pairs():
    assert pes.count_collectives(HLO, 7) == {"total": 3, "inner_step": 1}
    with pytest.raises(ValueError, match="no while loop of 4 trips"):
        pes.count_collectives(HLO, 4)
