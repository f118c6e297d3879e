"""MLflow's own basic-auth app in front of the tracking server: a sweep logs through it with a user's credentials, and
a wrong or missing password is one line."""

import json
import os
import textwrap
import uuid

import optuna
import pytest
from support import MlflowServer, run_cli
from support.integration import server_runs, sweep_file

from kdtrain.study import search

ADMIN_PW, USER_PW = "Adm1n-kd-test-pw", "w0rker-kd-test-pw"


def _api(url: str, path: str, user: str | None = None, password: str | None = None, body: dict | None = None) -> int:
    import base64
    import urllib.error

    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode() if body else None, headers={"Content-Type": "application/json"}
    )
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """MLflow's own basic-auth app (`mlflow server --app-name basic-auth`) on 127.0.0.1: anonymous requests refused,
    an admin created on first start, and one user for the workers. It remembers a password it checked for 5 minutes
    (auth_cache_ttl_seconds, as docs/machines.md advises): otherwise every request pays a scrypt hash."""
    pytest.importorskip("flask_wtf", reason="mlflow[auth] is not installed (the test extra installs it)")
    root = tmp_path_factory.mktemp("mlflow-auth")
    (root / "auth.ini").write_text(
        textwrap.dedent(f"""\
        [mlflow]
        default_permission = NO_PERMISSIONS
        database_uri = sqlite:///{root / "auth.db"}
        admin_username = admin
        authorization_function = mlflow.server.auth:authenticate_request_basic_auth
        grant_default_workspace_access = false
        auth_cache_ttl_seconds = 300
        """)
    )
    server = MlflowServer(
        root,
        extra_args=["--app-name", "basic-auth"],
        env={
            "MLFLOW_AUTH_CONFIG_PATH": str(root / "auth.ini"),
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PW,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
        },
    )
    with server:
        url = server.url
        assert (
            _api(url, "/api/2.0/mlflow/users/create", "admin", ADMIN_PW, {"username": "kd", "password": USER_PW}) == 200
        )
        yield url


def test_a_sweep_logs_through_mlflow_authentication_and_a_wrong_password_is_one_line(tmp_path, auth_server):
    url = auth_server
    search_path = "/api/2.0/mlflow/experiments/search?max_results=10"
    assert _api(url, search_path) == 401  # the server really is closed to anyone without a user
    p = sweep_file(tmp_path, 1)
    base = {"KDTRAIN_HOME": str(tmp_path / "home"), "KDTRAIN_DATA": str(tmp_path / "data")}

    wrong = run_cli(
        "sweep",
        p,
        "--tracking-uri",
        url,
        "--no-report",
        env={**base, "MLFLOW_TRACKING_USERNAME": "kd", "MLFLOW_TRACKING_PASSWORD": "not-the-password"},
    )
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    assert wrong.stderr.strip() == (
        f"kdtrain: error: the MLflow tracking server {url} refused the credentials "
        "(HTTP 401); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user "
        "it knows (or MLFLOW_TRACKING_TOKEN)"
    )
    assert "not-the-password" not in wrong.stdout + wrong.stderr
    assert not (tmp_path / "home" / "optuna.journal").exists()  # nothing started
    anonymous = run_cli("sweep", p, "--tracking-uri", url, "--no-report", env=base)
    assert anonymous.returncode == 1 and "needs credentials (HTTP 401)" in anonymous.stderr

    ok = run_cli(
        "sweep",
        p,
        "--tracking-uri",
        url,
        "--no-report",
        env={**base, "MLFLOW_TRACKING_USERNAME": "kd", "MLFLOW_TRACKING_PASSWORD": USER_PW},
    )
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert USER_PW not in ok.stdout + ok.stderr
    # the runs are on the server, readable by the user who wrote them
    os.environ.update(MLFLOW_TRACKING_USERNAME="kd", MLFLOW_TRACKING_PASSWORD=USER_PW)
    try:
        df = server_runs(url, "tiny")
    finally:
        for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(k, None)
    assert len(df[df["tags.kdtrain.role"] == "student"]) == 1 and (df["status"] == "FINISHED").all()
    study = optuna.load_study(study_name="tiny", storage=search.open_storage(str(tmp_path / "home" / "optuna.journal")))
    assert study.user_attrs["kdtrain.tracking_uri"] == url  # the server, never the password
