"""From a sweep to a shipped student: register chosen trials' logged models in the MLflow Model Registry, and
browse a study in optuna-dashboard. (MLflow stays behind kdtrain.tracking.client, Optuna behind kdtrain.study.search.)"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from kdtrain.data import datasets
from kdtrain.deploy import export
from kdtrain.errors import KdtrainError
from kdtrain.study import search
from kdtrain.tracking.client import MODEL_TAG, Tracker
from kdtrain.tracking.params import trial_config


def register(tracker: Tracker, study_name: str, chosen: list, name: str, alias: str | None) -> list[dict]:
    """Register each chosen trial's logged model as a version of `name` (created if need be), its description the
    deployment card (with kdtrain confirm's numbers where it ran), tags naming the study and trial; the alias goes
    to the confirmed trial with the highest mean val accuracy over its new seeds, else (none confirmed) to the
    highest single-training val accuracy. Every trial is checked before anything is registered. (rows for a table:
    trial, val_acc, confirmed_val_acc, version, alias; what the alias was ranked by, in words)"""
    picks = _logged_models(tracker, study_name, chosen)
    confirmed = confirmed_trials(tracker, study_name)
    loaded: dict[str, datasets.Dataset] = {}
    rows = [
        _register_one(tracker, study_name, name, t, run_id, model_id, confirmed.get(t.number), loaded)
        for t, run_id, model_id in picks
    ]
    ranked_by = _set_alias(tracker, study_name, name, alias, rows) if alias and rows else ""
    for r in rows:
        r["val_acc"] = f"{r['val_acc']:.4f}"
        r["confirmed_val_acc"] = "-" if r["confirmed_val_acc"] is None else f"{r['confirmed_val_acc']:.4f}"
    return rows, ranked_by


def _logged_models(tracker: Tracker, study_name: str, chosen: list) -> list[tuple]:
    """(trial, run id, logged model id) of each chosen trial; one clear error for a trial without a logged model."""
    picks = []
    for t in chosen:
        run_id = t.user_attrs.get(search.T_RUN)
        model_id = tracker.run_tags(run_id).get(MODEL_TAG, "") if run_id else ""
        if not model_id.startswith("m-"):
            why = model_id.removeprefix("none: ") or "its run has no MLflow logged model (a study swept before "
            "kdtrain logged models: rerun the trial, or use kdtrain export)"
            raise KdtrainError(f"trial {t.number} of {study_name!r} cannot be registered: {why}")
        picks.append((t, run_id, model_id))
    return picks


def _register_one(
    tracker: Tracker, study_name: str, name: str, t, run_id: str, model_id: str, c: dict | None, loaded: dict
) -> dict:
    """One trial's model as a version of `name`, its card (and kdtrain confirm's numbers `c`) as its description;
    `loaded` keeps the datasets read for the cards (one load per dataset). Its row for the table."""
    cfg = trial_config(tracker, run_id)
    key = json.dumps(dataclasses.asdict(cfg.data), sort_keys=True, default=str)
    ds = loaded.setdefault(key, datasets.load(cfg.data))  # for the card's preprocessing (one load per dataset)
    metrics = tracker.metrics(run_id)
    card = export.make_card(cfg, ds, study_name, t.number, run_id, metrics)
    tags = {
        "optuna.study": study_name,
        "optuna.trial": t.number,
        "kdtrain.role": "student",
        "val_accuracy": f"{metrics.get('val_accuracy', float('nan')):.4f}",
        "params": f"{metrics.get('params', float('nan')):.0f}",
    }
    text = export.card_text(card, metrics)
    if c:  # what a reader of the registry should trust: the means over the new seeds
        tags["confirmed_val_accuracy"] = f"{c['val']:.4f}"
        text += (
            f"\n- confirmed over {c['seeds']} new seeds (kdtrain confirm): {c['val']:.4f} ± {c['val_std']:.4f} "
            f"validation, {c['test']:.4f} ± {c['test_std']:.4f} test; paired test gain over the no-teacher "
            f"baseline of each seed {c['gain']:+.2f} ± {c['gain_std']:.2f} points"
        )
    version = tracker.register(name, model_id, run_id, text, tags)
    return {
        "trial": t.number,
        "val_acc": metrics.get("val_accuracy", float("nan")),
        "confirmed_val_acc": c["val"] if c else None,
        "version": version,
        "model": f"models:/{name}/{version}",
        "alias": "",
    }


def _set_alias(tracker: Tracker, study_name: str, name: str, alias: str, rows: list[dict]) -> str:
    """The alias on the best registered version (rows: register's, the alias column filled in): the confirmed
    trials ranked by their mean over new seeds, else the single trainings by val accuracy. What it was ranked by."""
    sure = [r for r in rows if r["confirmed_val_acc"] is not None]
    if sure:  # confirmed trials by their mean over new seeds; a single training does not outrank them
        best = max(sure, key=lambda r: r["confirmed_val_acc"])
        left = [str(r["trial"]) for r in rows if r["confirmed_val_acc"] is None]
        ranked_by = (
            f"version {best['version']} (trial {best['trial']}), the highest mean val accuracy over "
            f"kdtrain confirm's new seeds ({best['confirmed_val_acc']:.4f})"
            + (f"; unconfirmed trial(s) {', '.join(left)} not ranked" if left else "")
        )
    else:
        best = max(rows, key=lambda r: r["val_acc"])
        ranked_by = (
            f"version {best['version']} (trial {best['trial']}), the highest single-training val "
            f"accuracy ({best['val_acc']:.4f}); none is confirmed: kdtrain confirm {study_name} "
            "--pareto --seeds 3 ranks them by new seeds"
        )
    tracker.set_alias(name, alias, best["version"])
    best["alias"] = alias
    return ranked_by


def confirmed_trials(tracker: Tracker, study_name: str) -> dict[int, dict]:
    """kdtrain confirm's numbers per trial of the study, from its MLflow runs (report.confirmed_stats)."""
    from kdtrain.report.study_data import confirmed_stats

    runs, _ = tracker.runs_frame(study_name)
    stats = confirmed_stats(runs[runs["tag:kdtrain.role"] == "confirm"] if not runs.empty else runs)
    return {int(trial): {**row, "seeds": int(row["seeds"])} for trial, row in stats.iterrows()}


def above_floor(
    tracker: Tracker, study_name: str, chosen: list, min_gain: float | None, log: Callable[[str], None] = print
) -> list:
    """The chosen front students whose test gain over the no-teacher baseline of their width is at least
    `min_gain` points (kdtrain confirm's paired gain over its new seeds where it ran, else the gain of the single
    training against the baseline's seed mean, as the report's Pareto table shows it); None keeps every one. One
    line names those left out; a student whose gain is not measured yet (its follow-up not done) is kept and said."""
    if min_gain is None:
        return chosen
    confirmed = confirmed_trials(tracker, study_name)
    kept, out, unknown = [], [], []
    for t in chosen:
        c = confirmed.get(t.number)
        run_id = t.user_attrs.get(search.T_RUN)
        gain = c["gain"] if c else 100 * tracker.metrics(run_id).get("kd_gain_test", float("nan")) if run_id else None
        if gain is None or gain != gain:
            unknown.append(t.number)
            kept.append(t)
        elif gain < min_gain:
            out.append(f"{t.number} ({gain:+.1f}{' confirmed' if c else ''})")
        else:
            kept.append(t)
    if out:
        log(
            f"left out (test gain over the no-teacher baseline of their width below {min_gain:g} points): trial"
            f"{'s' if len(out) > 1 else ''} {', '.join(out)}; --min-gain any keeps them"
        )
    if unknown:
        log(
            f"kept, gain not measured yet (the sweep's follow-up has not run): trial{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(str, unknown))}"
        )
    if not kept:
        raise KdtrainError(
            f"every student on the front of {study_name!r} is below --min-gain {min_gain:g} points "
            "over the no-teacher baseline of its width: a student trained alone is the better choice; "
            "--min-gain any (or --trial N) takes them anyway"
        )
    return kept


class _DashboardServer(ThreadingMixIn, WSGIServer):
    """optuna-dashboard's WSGI app, a thread per request (daemon threads: a request in flight, even a half-sent one,
    never keeps the process alive once the server stops)."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # no line per request on the terminal
        pass


def dashboard(storage_url: str | None, study: str | None, port: int, log: Callable[[str], None] = print) -> int:
    """optuna-dashboard on the study's storage (a journal file or an RDB), on 127.0.0.1 until Ctrl-C or SIGTERM."""
    try:
        import optuna_dashboard
    except ImportError:
        raise KdtrainError(
            "kdtrain dashboard needs optuna-dashboard: pip install 'kdtrain[dashboard]' "
            "(or pip install optuna-dashboard)"
        ) from None
    storage = search.existing_storage(storage_url)
    url = f"http://127.0.0.1:{port}/dashboard"
    if study:
        search.load(study, storage_url, storage)  # one clear error for an unknown study
        url += f"/studies/{storage.get_study_id_from_name(study)}"
    log(f"optuna-dashboard at {url}  (Ctrl-C to stop)")
    try:
        server = make_server(
            "127.0.0.1",
            port,
            optuna_dashboard.wsgi(storage),
            server_class=_DashboardServer,
            handler_class=_QuietHandler,
        )
    except OSError as e:
        raise KdtrainError(f"cannot serve on 127.0.0.1:{port} ({e.strerror or e}); choose another --port") from None

    def stop(signum, frame):  # SIGTERM or Ctrl-C: the server's own shutdown, from a thread (serve_forever waits)
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.serve_forever(poll_interval=0.2)  # requests run in their own threads: none can hold up a stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
    log("optuna-dashboard stopped")
    return 0


def _port_free(port: int) -> None:
    """One clear error when 127.0.0.1:port is taken (another kdtrain ui, an mlflow server), before anything starts."""
    import socket

    from kdtrain.errors import UsageError

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise UsageError(
                f"port {port} on 127.0.0.1 is in use (another kdtrain ui or MLflow server?); give a free "
                f"one with --port {port + 1}"
            ) from None


def _answers(url: str, proc, timeout: float = 120) -> bool:
    """Wait until the server at url answers (True), or its process ends (False)."""
    import time
    import urllib.request

    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return proc.poll() is None


def mlflow_ui(uri: str, port: int, study: str | None = None) -> int:
    """`mlflow ui` on 127.0.0.1 against the store, in its own process group (it starts a server of its own): one
    SIGTERM or Ctrl-C to kdtrain ui ends all of it, and nothing outlives kdtrain ui. Prints the link to the
    study's runs (each study's, without one) on the port it serves."""
    import os
    import subprocess
    import sys

    from kdtrain.errors import KdtrainError
    from kdtrain.paths import redact
    from kdtrain.tracking.client import Tracker

    url = f"http://127.0.0.1:{port}"
    tracker = Tracker(uri)
    found = [(i, n) for i, n in tracker.experiments() if study in (None, n) and n != "Default"]
    if study and not found:
        raise KdtrainError(
            f"no study named {study!r} in the MLflow store {redact(uri)} (drop the name for every "
            "study, or pass the --tracking-uri the sweep used)"
        )
    _port_free(port)
    print(f"starting the MLflow UI for {redact(uri)} on {url} ...", flush=True)
    # one server worker: one person browsing (MLflow's default, 4, is 4 more processes and about 0.5 GB)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port"]
    cmd += [str(port), "--workers", "1"]
    # MLflow 3 starts a job runner and seven huey consumers with its server, for GenAI jobs kdtrain never uses:
    # 8 more processes, ~1.5 GB and ~10 s of CPU at start. Off unless the user's environment asks for them.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    return _serve(proc, url, lambda: _say_links(redact(uri), url, tracker, found))


def _say_links(store: str, url: str, tracker, found: list[tuple[str, str]]) -> None:
    """The MLflow UI's links once it answers: each study's runs (the first 20)."""
    import sys

    print(f"MLflow UI for {store} at {url}  (Ctrl-C to stop)")
    for exp_id, name in found[:20]:
        print(f"  {name}: {tracker.link(exp_id, url)}")
    if len(found) > 20:
        print(f"  ... and {len(found) - 20} more studies at {url}/#/experiments")
    sys.stdout.flush()


def _serve(proc, url: str, say_links: Callable[[], None]) -> int:
    """Wait for the server process (its own process group) until it ends or SIGTERM / Ctrl-C stops it, saying its
    links once it answers; then nothing of its group is left. 0 when stopped, else its exit code."""
    import contextlib
    import os
    import subprocess

    stopped = []

    def stop(signum, frame):
        stopped.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if _answers(url, proc):  # the links once they work
            say_links()
        rc = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:  # kdtrain ui itself failed: leave nothing behind
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):  # workers of the group that outlived their parent
            os.killpg(proc.pid, signal.SIGKILL)
    return 0 if stopped else rc
