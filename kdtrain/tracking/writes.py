"""How each write to a run is sent to MLflow, now or later from the outbox (kdtrain.tracking.outbox): the `_w_<op>` methods
of kdtrain.tracking.client.Tracker. Each is safe to send again: a write cut halfway (a tracking server gone between two
of its calls) or sent but not yet removed from the outbox (a crash) repeats nothing the server took. Metrics
record the batches sent and carry the time they were logged; a logged model records its id once created and is
found by its write id (WRITE_TAG) when the reply that named it was lost.
"""

from __future__ import annotations

import re
import tempfile
import time
import warnings
from pathlib import Path

from kdtrain.errors import KdtrainError
from kdtrain.tracking.outbox import PENDING, Deferring, Outbox

MODEL_TAG = "kdtrain.model_id"
"""A run's tag naming its MLflow logged model (models:/<id>): the student, baseline or teacher as an MLflow model."""
WRITE_TAG = "kdtrain.write"
"""A run's or logged model's tag: the id of the write that created it, so that the write sent again (its reply lost
in an outage) finds what its first try made instead of making a second."""
CURVES = ("train_loss", "kd_loss", "ce_loss", "val_accuracy")
"""The per-epoch metrics of a run's history (step = epoch)."""


def literal(value) -> str:
    """A value as a string literal of MLflow's search syntax: in single quotes, or in double quotes when it holds a
    single quote (bob's-sweep); MLflow has no escape inside either, so a value with both kinds is refused (study
    names are checked for that up front, see kdtrain.config)."""
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise KdtrainError(f"{text!r} holds both kinds of quote, which MLflow's search cannot match; rename it")


class Writes(Deferring):
    """The sending side of Tracker's writes (it gives `client`, `uri` and `outbox`)."""

    def _w_metrics(
        self,
        run_id: str,
        folder: Path,
        metrics: dict,
        history: list,
        model_id: str | None,
        at: int | None = None,
        sent: int = 0,
        times: dict | None = None,
    ) -> None:
        """In batches of 500 points, each batch recorded as sent once the server took it (a write sent again
        after a cut starts at the first batch not taken); every point stamped with the time it was logged, or
        with its first logging's time (`times`: a final metric linked to the model logged since, which MLflow
        then stores as the same point)."""
        from mlflow.entities import Metric

        if model_id and model_id.startswith(PENDING):
            model_id = self.outbox.alias(model_id)  # made by a kept log_model sent before this write
        at = at or int(time.time() * 1000)
        items = [Metric(k, v, (times or {}).get(k, at), 0, model_id=model_id) for k, v in metrics.items()]
        items += [Metric(k, s[k], at, s["epoch"]) for s in history for k in CURVES]
        for i in range(sent, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i : i + 500])
            Outbox.update(folder, {"sent": i + 500})

    def _w_step(self, run_id: str, folder, metrics: dict, step: int, at: int | None = None) -> None:
        from mlflow.entities import Metric

        at = at or int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, at, step) for k, v in metrics.items()])

    def _w_tags(self, run_id: str, folder, tags: dict) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def _w_artifact(self, run_id: str, folder: Path, **_) -> None:
        for f in sorted(folder.iterdir()):
            if f.name != "record.json":
                self.client.log_artifact(run_id, str(f))

    def _w_model(
        self, run_id: str, folder: Path, exp_id: str, name: str, tags: dict, model_id: str | None = None
    ) -> str:
        """Five calls, each made once however often the write is sent: the logged model (its id recorded in the
        write, else found by its write id) created, its files uploaded and the model READY unless it is, linked
        to the run unless it is, the run tagged."""
        import torch
        from mlflow.entities import LoggedModelOutput

        pt2 = (folder / "model.pt2").exists()
        x = torch.load(folder / "example.pt", weights_only=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            model = (
                torch.export.load(str(folder / "model.pt2")).module()
                if pt2
                else torch.jit.load(str(folder / "model.ts"), map_location="cpu")
            )
            with torch.no_grad():
                out = model(x).numpy()
        name = re.sub(r"[^A-Za-z0-9_-]+", "-", name)  # MLflow refuses ':', '.', '/' in a model name (python: archs)
        run = self.client.get_run(run_id)
        if model_id is None and self.outbox is not None and WRITE_TAG in tags:  # a first try's reply lost
            found = self.client.search_logged_models([exp_id], f"tags.`{WRITE_TAG}` = {literal(tags[WRITE_TAG])}")
            model_id = found[0].model_id if found else None
        if model_id is None:
            lm = self.client.create_logged_model(
                exp_id,
                name=name,
                source_run_id=run_id,
                model_type="classifier",
                tags=tags,
                params=dict(run.data.params),
            )
            Outbox.update(folder, {"model_id": lm.model_id})
        else:
            lm = self.client.get_logged_model(model_id)
        if lm.status != "READY":
            self._model_files(lm, run_id, model, x, out, pt2)
        if lm.model_id not in {o.model_id for o in (run.outputs.model_outputs if run.outputs else [])}:
            self.client.log_outputs(run_id, [LoggedModelOutput(lm.model_id, step=0)])
        self._w_tags(run_id, folder, {MODEL_TAG: lm.model_id})
        return lm.model_id

    def _model_files(self, lm, run_id: str, model, x, out, pt2: bool) -> None:
        """A logged model's files in MLflow's pytorch flavor, uploaded; the model READY."""
        import mlflow.pytorch
        import torch
        from mlflow.models import Model, infer_signature

        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "model"
            meta = Model(
                artifact_path=lm.artifact_location, model_uuid=lm.model_id, run_id=run_id, model_id=lm.model_id
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # export's notes on buffers (a GRU's flat weights)
                # pt2: the example's batch of 2 keeps the batch dimension dynamic (export fixes a size of 1)
                mlflow.pytorch.save_model(
                    model,
                    saved,
                    mlflow_model=meta,
                    signature=infer_signature(x.numpy(), out),
                    input_example=(x if pt2 else x[:1]).numpy(),
                    serialization_format="pt2" if pt2 else "pickle",
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                )
            self.client.log_model_artifacts(lm.model_id, str(saved))
        self.client.finalize_logged_model(lm.model_id, "READY")

    def answers(self) -> bool:
        """Does the tracking server answer /health now (one try, 5 s)?"""
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        try:
            return (
                http_request(
                    get_default_host_creds(self.uri), "/health", "GET", max_retries=0, timeout=5, raise_on_status=False
                ).status_code
                == 200
            )
        except Exception:  # noqa: BLE001 - refused, timed out: not answering
            return False

    def _w_end(self, run_id: str, folder, status: str) -> None:
        self.client.set_terminated(run_id, status=status)
