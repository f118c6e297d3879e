"""The MLflow side: with kdtrain.tracking.writes (how each write to a run is sent), the only module that imports mlflow.

Naming contract (the README's "What MLflow holds"): experiment = study name, one parent run per
study (tag kdtrain.role=sweep), a child run per trial (``trial-<n>``), per
teacher (``teacher-<name>``) and per no-teacher baseline
(``baseline-<arch>-w<width>``); params under their dotted names; per-epoch
metrics with step = epoch; run status mirrors the trial.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import time
import urllib.parse
import uuid
import warnings
from pathlib import Path

from kdtrain.errors import KdtrainError, first_line, not_a_stop
from kdtrain.paths import home, redact
from kdtrain.shared import atomic_dir, uninterrupted
from kdtrain.tracking.outbox import Outbox, innermost_cause
from kdtrain.tracking.writes import CURVES, MODEL_TAG, WRITE_TAG, Writes, literal

ROLE = "kdtrain.role"
MODEL_ARTIFACT, CONFIG_ARTIFACT, SWEEP_ARTIFACT = "model.pt", "config.yaml", "sweep.yaml"
"""A student run's state dict and its trial's full config; the parent run's resolved sweep file."""
TEACHER_ARTIFACTS = "teacher"
"""A teacher run's folder holding its cache entry (weights, logits, meta), fetched by workers elsewhere."""
TIDY_TAGS = ("kdtrain.role", "optuna.trial", "optuna.state", "mlflow.runName", "kdtrain.seed", "kdtrain.teacher_data")
RUNS_VIEW = "#/experiments/{id}/runs?workflowType=machine_learning"
MODELS_VIEW = "#/experiments/{id}/models?workflowType=machine_learning"
"""The experiment's logged models in the MLflow UI (its training view, not the GenAI one)."""


def _quiet() -> None:
    # MLflow prints "View run ... at" for every run it ends on a server; kdtrain prints its own runs-view link
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in worker logs
    # MLflow's own retries (7, about 4 minutes of backoff) hid a tracking server that went away: silence, then the
    # error. 4 (about 30 s): then kdtrain's waiting (study.storage_patience) takes over and says so. A user's wins.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")
    import mlflow  # noqa: F401  (its import sets its loggers to INFO; lower them afterwards)

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # machines without network; nothing to send anyway
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # its advice on pickle: a TorchScript file is none
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").addFilter(not_a_stop)  # added once: a filter is never added twice
    warnings.filterwarnings("ignore", module="mlflow")
    warnings.filterwarnings("ignore", message=".*noload.*")


def _read(method):
    """A read of the tracking server (a search, a run's tags or metrics, an artifact): the server away, waited for
    as a run's creation is (Writes.patiently: up to study.storage_patience, then TrackingLost), so that a follow-up
    or a teacher fetch in an outage waits instead of ending its worker."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return self.patiently(lambda again: method(self, *args, **kwargs))

    return call


def default_uri() -> str:
    """MLFLOW_TRACKING_URI, else SQLite under kdtrain's home (absolute path)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def load_state_dict(uri: str) -> dict:
    """State dict of a PyTorch model logged to MLflow (runs:/..., models:/...)."""
    _quiet()
    import mlflow.pytorch

    try:
        model = mlflow.pytorch.load_model(uri, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - mlflow raises many types for a bad URI; report it as one message
        raise KdtrainError(f"could not load the MLflow model {uri}: {first_line(e, 300)}") from None
    return model.state_dict()


def _split_credentials(uri: str) -> str:
    """http://user:pass@host -> http://host, the credentials moved to MLflow's own environment variables (so that
    the password never sits in a printed URI, a log or a child's command line)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri
    user, _, host = parts.netloc.rpartition("@")
    name, _, password = user.partition(":")
    os.environ["MLFLOW_TRACKING_USERNAME"] = urllib.parse.unquote(name)
    if password:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = urllib.parse.unquote(password)
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def kept_trials(uri: str | None, study: str) -> list[int]:
    """The trials of a study whose MLflow writes wait in this machine's outbox for the tracking server."""
    uri = _split_credentials(uri or default_uri())
    return [n for _, n in Outbox(redact(uri)).waiting_trials(study)] if uri.startswith(("http://", "https://")) else []


def check_reachable(uri: str | None) -> None:
    """Fail fast, with one clear message, when an MLflow tracking server cannot be reached or refuses the
    credentials (local stores: no-op).

    Asks the way MLflow's own client will, with the credentials and TLS settings it reads (user and password or
    MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_INSECURE_TLS, client certificates,
    ~/.mlflow/credentials), but without its minutes of retries: /health (is a server there?) and one read of the
    tracking API (does it accept us? MLflow's basic-auth app leaves /health open, so a wrong password shows only
    there), each once with a 10 s timeout."""
    uri = _split_credentials(uri or default_uri())
    if not uri.startswith(("http://", "https://")):
        return
    _quiet()
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    for endpoint, params in (("/health", None), ("/api/2.0/mlflow/experiments/search", {"max_results": 1})):
        try:
            response = http_request(
                creds, endpoint, "GET", max_retries=0, timeout=10, raise_on_status=False, params=params
            )
        except Exception as e:  # noqa: BLE001 - requests' connection, TLS and timeout errors, wrapped by MLflow
            raise KdtrainError(
                f"cannot reach the MLflow tracking server {redact(uri)} ({innermost_cause(e)}); start it "
                "(mlflow server ..., see the README) or fix --tracking-uri / MLFLOW_TRACKING_URI"
                + (
                    "; for a private CA set MLFLOW_TRACKING_SERVER_CERT_PATH"
                    if "SSL" in str(e) or "certificate" in str(e)
                    else ""
                )
            ) from None
        if response.status_code in (401, 403):
            what = "refused the credentials" if creds.username or creds.token else "needs credentials"
            raise KdtrainError(
                f"the MLflow tracking server {redact(uri)} {what} (HTTP {response.status_code}); set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user it knows (or "
                "MLFLOW_TRACKING_TOKEN)"
            )
        # any other answer means a server is there (a proxy without /health, an older API)


class _Uninterrupted:
    """An MlflowClient on a local SQLite store whose every call a Ctrl-C or SIGTERM does not cut short: the stop is
    raised when the call returns (milliseconds; an HTTP client is not wrapped, its calls can wait minutes for a
    server)."""

    def __init__(self, client):
        self.client = client

    def __getattr__(self, name: str):
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            with uninterrupted():
                return attr(*args, **kwargs)

        return call


class Tracker(Writes):
    """Explicit-run-id logging through MlflowClient (safe across worker processes).

    With a tracking server, the writes to existing runs (metrics, tags, artifacts, logged models, a run's end)
    survive the server going away: a write the server cannot take, and every write after it, is kept in this
    machine's outbox (kdtrain.tracking.outbox) and sent, in order and once, when the server answers again (flush). One
    warning line says since when. Creating a run, and reading (searches, tags, metrics, artifacts), wait for the
    server (up to `patience`, then TrackingLost)."""

    def __init__(self, uri: str | None = None):
        _quiet()
        from mlflow.tracking import MlflowClient

        self.uri = _split_credentials(uri or default_uri())
        # a local SQLite store keeps its artifacts beside the database (absolute; not the cwd's ./mlruns)
        self.artifacts = None
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri[len("sqlite:///") :]).resolve()
            db.parent.mkdir(parents=True, exist_ok=True)
            self.artifacts = db.parent / "artifacts"
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            if self.uri.startswith("sqlite:"):  # a Ctrl-C mid-write is raised after it (see shared.uninterrupted)
                self.client = _Uninterrupted(self.client)
        except Exception as e:  # noqa: BLE001 - requests' connection, TLS and timeout errors, wrapped by MLflow
            raise KdtrainError(f"cannot open the MLflow store {redact(self.uri)}: {first_line(e, 300)}") from None
        self.outbox = Outbox(redact(self.uri)) if self.uri.startswith(("http://", "https://")) else None
        self.down_since: float | None = None
        self.labels: dict = {}
        """The study and trial the writes of the moment belong to (kept with them: kdtrain status counts them)."""

    # ------------------------------------------------------------------ experiment and runs
    @_read
    def experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        loc = (self.artifacts / name).as_uri() if self.artifacts else None
        try:
            exp_id = self.client.create_experiment(name, artifact_location=loc)
        except Exception:  # another worker created it first
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id
        # MLflow 3 opens experiments in its GenAI view; a training sweep belongs in the runs view.
        self.client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
        return exp_id

    def link(self, exp_id: str, server: str | None = None, view: str = RUNS_VIEW) -> str | None:
        """The experiment's view on the tracking server (or on `server`, a UI serving this store); None for a
        local store, whose UI runs wherever `kdtrain ui --port` puts it (kdtrain ui prints the link)."""
        base = server or (self.uri if self.uri.startswith(("http://", "https://")) else None)
        return f"{redact(base).rstrip('/')}/{view.format(id=exp_id)}" if base else None

    @_read
    def experiments(self) -> list[tuple[str, str]]:
        """(id, name) of the store's experiments, newest first."""
        return [(e.experiment_id, e.name) for e in self.client.search_experiments(order_by=["creation_time DESC"])]

    @_read
    def find(self, exp_id: str, tags: dict[str, str]) -> list[str]:
        """Ids of the runs of an experiment whose tags equal the given values."""
        flt = " and ".join(f"tags.`{k}` = {literal(v)}" for k, v in tags.items())
        return [r.info.run_id for r in self.client.search_runs([exp_id], filter_string=flt, max_results=1000)]

    def start(
        self,
        exp_id: str,
        name: str,
        role: str,
        parent_id: str | None = None,
        tags: dict | None = None,
        params: dict | None = None,
        inputs: list | None = None,
    ) -> str:
        """A new run with its tags, params and dataset inputs. The tracking server away: waited for (patiently),
        and a run whose creation landed before the reply was lost is found by its write id, not made twice."""
        all_tags = {ROLE: role, WRITE_TAG: uuid.uuid4().hex, **(tags or {})}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id

        def create(again: bool) -> str:
            found = self.find(exp_id, {WRITE_TAG: all_tags[WRITE_TAG]}) if again else []
            run_id = (
                found[0]
                if found
                else self.client.create_run(
                    exp_id, run_name=name, tags={k: str(v) for k, v in all_tags.items()}
                ).info.run_id
            )
            if params:  # the same values again: MLflow takes them as they are
                self.log_params(run_id, params)
            self.log_inputs(run_id, inputs or [])  # a dataset already linked to the run is linked once
            return run_id

        return self.patiently(create)

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, redact(str(v))) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(
        self,
        run_id: str,
        metrics: dict,
        history: list | None = None,
        model_id: str | None = None,
        times: dict[str, int] | None = None,
    ) -> None:
        """Final metrics (no step; linked to the run's logged model when given) and per-epoch history (step =
        epoch) in a few batched writes. `times`: a final metric's timestamp (ms) where it was logged before (see
        final_points): the same point again, now linked to the model, not a second point in the run's history."""
        curves = [{"epoch": s.epoch, **{k: float(getattr(s, k)) for k in CURVES}} for s in history or []]
        self._write(
            "metrics",
            run_id,
            {
                "metrics": {k: float(v) for k, v in metrics.items() if v is not None},
                "history": curves,
                "model_id": model_id,
                "at": int(time.time() * 1000),
                "times": times or {},
            },
        )

    @_read
    def final_points(self, run_id: str, keys) -> dict[str, tuple[float, int]]:
        """Each key's final point (step 0) as the run logged it: (value, timestamp in ms)."""
        points = {}
        for key in keys:
            final = [m for m in self.client.get_metric_history(run_id, key) if m.step == 0]
            if final:
                last = max(final, key=lambda m: m.timestamp)
                points[key] = (last.value, last.timestamp)
        return points

    def log_step(self, run_id: str, metrics: dict, step: int) -> None:
        """Metrics at one step (a study's progress on its parent run)."""
        self._write(
            "step",
            run_id,
            {"metrics": {k: float(v) for k, v in metrics.items()}, "step": step, "at": int(time.time() * 1000)},
        )

    def set_tags(self, run_id: str, tags: dict) -> None:
        self._write("tags", run_id, {"tags": {k: str(v) for k, v in tags.items()}})

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self._write("artifact", run_id, {}, {name: text.encode()})

    def log_file(self, run_id: str, path: str | Path) -> None:
        self.client.log_artifact(run_id, str(path))

    def log_dir(self, run_id: str, folder: str | Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    @_read
    def fetch_dir(self, run_id: str, artifact_path: str, dest: Path) -> bool:
        """Download a run's artifact folder to dest, atomically (a partial download never appears at dest).
        False when the run has no such folder."""
        if not self.client.list_artifacts(run_id, artifact_path):
            return False
        with atomic_dir(dest) as tmp:
            self.client.download_artifacts(run_id, artifact_path, str(tmp))
            for f in (tmp / artifact_path).iterdir():  # the folder's content, not the folder, becomes dest
                os.replace(f, tmp / f.name)
            (tmp / artifact_path).rmdir()
        return dest.exists()

    @_read
    def download(self, run_id: str, dest: str | Path, path: str = "") -> Path:
        """A run's artifact (all of them by default) into dest: the local path, or one clear error."""
        try:
            return Path(self.client.download_artifacts(run_id, path, str(dest)))
        except Exception as e:  # noqa: BLE001 - requests' connection, TLS and timeout errors, wrapped by MLflow
            raise KdtrainError(
                f"cannot read the MLflow run {run_id} in {redact(self.uri)} ({str(e)[:200]}); "
                "pass the --tracking-uri the sweep used"
            ) from None

    def log_state_dict(self, run_id: str, state: dict, name: str = MODEL_ARTIFACT) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        self._write("artifact", run_id, {}, {name: buffer.getvalue()})

    # ------------------------------------------------------------------ MLflow models and dataset inputs
    def log_model(self, run_id: str, exp_id: str, name: str, model, example, tags: dict | None = None) -> str | None:
        """The run's model as an MLflow logged model (linked to the run; kdtrain.model_id tags the run): the files
        of kdtrain.deploy.export.logged_model_files, whose signature and input example come from `example` (inputs
        as the model takes them). None, with a tag saying why, when no export reproduces the model (a python:
        factory with data-dependent control flow, say)."""
        from kdtrain.deploy.export import logged_model_files

        files = logged_model_files(model, example)
        if files is None:
            self.set_tags(
                run_id, {MODEL_TAG: "none: neither torch.export nor TorchScript reproduces this model; see model.pt"}
            )
            return None
        tags = {**{k: str(v) for k, v in (tags or {}).items()}, WRITE_TAG: uuid.uuid4().hex}
        return self._write("model", run_id, {"exp_id": exp_id, "name": name, "tags": tags}, files)

    def register(self, name: str, model_id: str, run_id: str, description: str, tags: dict) -> str:
        """A version of registered model `name` for a logged model (the registered model created if need be); the
        version that already holds this model when it was registered before. Returns the version."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":  # an invalid name, a server without a registry
                raise KdtrainError(f"cannot create registered model {name!r}: {first_line(e)}") from None
        # the logged model's own artifact location as the source: a models:/ source makes a local registry look
        # the model up through MLflow's global tracking URI, not this client's
        source = self.client.get_logged_model(model_id).artifact_location
        for v in self.client.search_model_versions(f"name = {literal(name)}"):
            if v.source == source:
                return v.version
        return self.client.create_model_version(
            name,
            source,
            run_id=run_id,
            description=description,
            model_id=model_id,
            tags={k: str(v) for k, v in tags.items()},
        ).version

    def set_alias(self, name: str, alias: str, version: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.set_registered_model_alias(name, alias, version)
        except MlflowException as e:
            raise KdtrainError(f"cannot set alias {alias!r} on {name} version {version}: {first_line(e)}") from None

    def dataset_inputs(self, name: str, splits: dict) -> list:
        """MLflow dataset inputs for the runs of one dataset: split -> (x, y) arrays, each with MLflow's digest of
        the arrays and the split as its context (the runs view's Dataset column and filters). Made once."""
        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        return [
            DatasetInput(
                mlflow.data.from_numpy(x, targets=y, name=name)._to_mlflow_entity(),
                tags=[InputTag("mlflow.data.context", split)],
            )
            for split, (x, y) in splits.items()
        ]

    def log_inputs(self, run_id: str, inputs: list) -> None:
        if inputs:
            self.client.log_inputs(run_id, datasets=inputs)

    @_read
    def runs_frame(self, experiment: str):
        """(the experiment's runs as a DataFrame with plain column names, experiment id): metrics and params
        under their own names (val_accuracy, kd.alpha), the tags of TIDY_TAGS as tag:<name>, plus run_id,
        status, start_time and end_time. Empty (run_id and tag:kdtrain.role columns only) when the experiment has no runs."""
        import mlflow  # its import sets its loggers to INFO; lower them afterwards)
        import pandas as pd

        exp = self.client.get_experiment_by_name(experiment)
        df = pd.DataFrame()
        if exp is not None:
            mlflow.set_tracking_uri(self.uri)
            df = mlflow.search_runs(experiment_ids=[exp.experiment_id], max_results=100000)
        if df.empty:
            return pd.DataFrame(columns=["run_id", f"tag:{ROLE}"]), exp and exp.experiment_id
        out = df[["run_id", "status", "start_time", "end_time"]].copy()
        for c in df.columns:
            if c.startswith("metrics."):
                out[c[8:]] = pd.to_numeric(df[c], errors="coerce")
            elif c.startswith("params."):
                out[c[7:]] = df[c]
        for tag in TIDY_TAGS:
            out[f"tag:{tag}"] = df.get(f"tags.{tag}")
        return out, exp.experiment_id

    @_read
    def run_tags(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

    @_read
    def metrics(self, run_id: str) -> dict[str, float]:
        """A run's latest value of each metric."""
        return dict(self.client.get_run(run_id).data.metrics)

    def reopen(self, run_id: str) -> None:
        """Mark a finished run RUNNING again (a study resumed: its parent run)."""
        self.client.update_run(run_id, status="RUNNING")

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self._write("end", run_id, {"status": status})

    @_read
    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status
