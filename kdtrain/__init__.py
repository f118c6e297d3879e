"""kdtrain: knowledge-distillation sweeps with Optuna, MLflow and Pareto reports."""

__version__ = "0.1.0"
