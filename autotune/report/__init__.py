"""What a study found, for people and for scripts: summaries and JSON, progress lines, dashboard notes, plots, and
optuna-dashboard with autotune's best trial. Everything here reads trial records (``autotune.records``)."""
