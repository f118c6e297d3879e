"""The ground floor's paths and messages (kdtrain.paths): passwords never shown."""

import pytest

from kdtrain.config import redact


@pytest.mark.parametrize(
    "text, shown",
    [
        ("postgresql://kd:s3cret@db-host/optuna", "postgresql://kd:***@db-host/optuna"),
        ("postgresql://kd:p@ss:w0rd@db-host:5432/optuna", "postgresql://kd:***@db-host:5432/optuna"),
        ("http://someone:s3cret@mlflow-host:5000", "http://someone:***@mlflow-host:5000"),
        ("postgresql://db-host/optuna?user=kd&password=s3cret", "postgresql://db-host/optuna?user=kd&password=***"),
        (
            "postgresql://db-host/optuna?password=s3cret&sslmode=require",
            "postgresql://db-host/optuna?password=***&sslmode=require",
        ),
        ("http://mlflow-host:5000/?PASSWORD=s3cret", "http://mlflow-host:5000/?PASSWORD=***"),
        ("mysql://h/db?pwd=s3cret", "mysql://h/db?pwd=***"),
        ("mysql://h/db?passwd=s3cret", "mysql://h/db?passwd=***"),
        (
            "cannot open 'postgresql://kd:s3cret@h/db' nor http://h/?password=s3cret (timeout)",
            "cannot open 'postgresql://kd:***@h/db' nor http://h/?password=*** (timeout)",
        ),
        ("postgresql://kd@db-host/optuna", "postgresql://kd@db-host/optuna"),  # no password: unchanged
        ("http://127.0.0.1:5000/#/experiments/1", "http://127.0.0.1:5000/#/experiments/1"),
    ],
)
def test_redact_hides_user_info_and_query_passwords(text, shown):
    assert redact(text) == shown
    assert "s3cret" not in redact(text) and "p@ss" not in redact(text)
