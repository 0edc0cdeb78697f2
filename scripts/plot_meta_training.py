"""Meta-training plots from PES run directories (like the ELO paper's Fig. 2):
``inner_steps.png``, ``meta_loss.png`` and ``validation.png`` (:mod:`elo_gym.meta_plots`
says what each shows).

Usage::

    python scripts/plot_meta_training.py --elo runs/elo --naive runs/naive \
        --buffer runs/buffer --out plots/
"""

from elo_gym.meta_plots import PlotConfig, main, run

__all__ = ["PlotConfig", "main", "run"]

if __name__ == "__main__":
    main()
