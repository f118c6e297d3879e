"""The MLflow side: the only module that imports mlflow."""

from __future__ import annotations

from kdtrain.config import KdtrainError


def load_state_dict(uri: str) -> dict:
    """State dict of a PyTorch model logged to MLflow (runs:/..., models:/...)."""
    import mlflow.pytorch

    try:
        model = mlflow.pytorch.load_model(uri, map_location="cpu")
    except Exception as e:  # mlflow raises many types for a bad URI; report it as one message
        raise KdtrainError(f"could not load the MLflow model {uri}: {str(e).splitlines()[0][:300]}") from None
    return model.state_dict()
