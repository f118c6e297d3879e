"""The tracking wing, the MLflow side: runs, params, metrics and logged models (the naming contract), and
the outbox that keeps writes a tracking server could not take. The only wing that imports mlflow."""
