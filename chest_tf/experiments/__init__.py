"""Experiments: many runs, compared. An experiment file becomes planned runs (plan.py); each is
trained, skipped when finished or resumed when interrupted, and logged as a TensorBoard HParams
session (run.py); finished runs are read back and ranked (leaderboard.py). tuning.py searches one
architecture's hyperparameters with keras-tuner (the optional ``tune`` extra). The commands are
``python -m chest_tf.sweep`` and ``python -m chest_tf.tune``."""

from chest_tf.experiments.leaderboard import (
    aggregate,
    collect_rows,
    leaderboard_summary,
    plot_auc_vs_time,
    read_run,
    run_state,
    write_leaderboard,
)
from chest_tf.experiments.plan import (
    PlannedRun,
    Sweep,
    check_runs,
    default_sweep_dir,
    grid_label,
    load_sweep,
    parse_sweep,
    select_runs,
)
from chest_tf.experiments.run import (
    final_metrics,
    hparam_values,
    log_hparams,
    print_plan,
    run_or_skip,
    run_sweep,
    running_elsewhere,
    write_hparams_config,
    write_leaderboard_if_last,
    write_plan,
)
from chest_tf.experiments.tuning import (
    TuneResult,
    base_config,
    declare_space,
    import_keras_tuner,
    run_search,
    trial_config,
)

__all__ = [
    "PlannedRun", "Sweep", "TuneResult", "aggregate", "base_config", "check_runs", "collect_rows", "declare_space",
    "default_sweep_dir", "final_metrics", "grid_label", "hparam_values", "import_keras_tuner",
    "leaderboard_summary", "load_sweep", "log_hparams", "parse_sweep", "plot_auc_vs_time", "print_plan",
    "read_run", "run_or_skip", "run_search", "run_state", "run_sweep", "running_elsewhere", "select_runs",
    "trial_config", "write_hparams_config", "write_leaderboard", "write_leaderboard_if_last", "write_plan",
]
