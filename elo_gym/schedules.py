"""Schedules an agent applies between outer steps: alpha (Eq. 8), curriculum n_max."""

ALPHA_SCHEDULES = ("linear", "hold_linear", "constant")


def alpha_at(
    outer_step: int,
    num_outer_steps: int,
    schedule: str = "linear",
    hold_fraction: float = 0.0,
    constant: float = 1.0,
) -> float:
    """alpha_t for outer step t of T.

    ``linear``: t / (T - 1) (the paper). ``hold_linear``: 0 for the first
    ``hold_fraction`` of the steps, then linear to 1 (the ELO authors' code).
    ``constant``: always ``constant`` (alpha = 1 means no behavior cloning).
    """
    if schedule not in ALPHA_SCHEDULES:
        raise ValueError(
            f"unknown alpha schedule {schedule!r}; valid: {', '.join(ALPHA_SCHEDULES)}"
        )
    if schedule == "constant":
        return float(constant)
    if num_outer_steps <= 1:
        return 1.0
    if schedule == "linear":
        return min(1.0, outer_step / (num_outer_steps - 1))
    hold = int(hold_fraction * num_outer_steps)
    if outer_step < hold:
        return 0.0
    return min(1.0, (outer_step - hold) / max(1, num_outer_steps - 1 - hold))


def curriculum_n_max(
    outer_step: int, num_outer_steps: int, n_max: int, n_max_final: int
) -> int:
    """n_max growing linearly from ``n_max`` to ``n_max_final`` over the outer steps."""
    if num_outer_steps <= 1:
        return int(n_max_final)
    frac = min(1.0, outer_step / (num_outer_steps - 1))
    return int(round(n_max + frac * (n_max_final - n_max)))
