"""The distill wing: model families, losses, the training loop, the teacher pool and feature distillation;
distil one student from a config. Knows nothing of Optuna or MLflow."""
