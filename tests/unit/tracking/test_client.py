"""The tracking client (kdtrain.tracking.client): its pre-flight asks the server as MLflow would (credentials,
a 401 or 403 in one line, TLS with a private CA), and values in MLflow searches are quoted safely."""

import base64
import contextlib
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support import refused, write_sweep

from kdtrain.cli.commands import main
from kdtrain.config import KdtrainError
from kdtrain.tracking.client import Tracker, check_reachable, literal


@pytest.fixture
def clean_env(monkeypatch):
    """check_reachable moves URL credentials into MLflow's variables: undo that after the test; keep any proxy
    away from 127.0.0.1."""
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(k, "unset")
        monkeypatch.delenv(k)
    for k in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(k, "127.0.0.1,localhost")


@contextlib.contextmanager
def http_server(status_for):
    """A real HTTP server on 127.0.0.1 in a thread; status_for(headers) -> the status of every GET."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            code = status_for(self.headers)
            self.send_response(code)
            if code == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


SECRET = "s3cr3t-pw"


@pytest.mark.parametrize("status", [401, 403])
def test_a_tracking_server_refusing_credentials_is_one_line_without_the_password(clean_env, status):
    with http_server(lambda headers: status) as (host, seen):
        for url in (f"http://kd:{SECRET}@{host}", f"http://{host}/?password={SECRET}"):
            with pytest.raises(KdtrainError) as e:
                check_reachable(url)
            msg = str(e.value)
            assert "\n" not in msg and SECRET not in msg, msg
            assert f"the MLflow tracking server http://{host}" in msg and f"(HTTP {status})" in msg
            assert "refused the credentials" in msg and "MLFLOW_TRACKING_USERNAME" in msg
    assert len(seen) == 2 and seen[0][0] == "/health" and seen[1][0].endswith("/health")  # one request each
    # the user:pass of the first URL went to MLflow's own variables, not into any message
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "kd" and os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET


def test_kdtrain_sweep_stops_before_writing_when_the_server_says_401(tmp_path, capsys, clean_env):
    p = write_sweep(tmp_path)
    with http_server(lambda headers: 401) as (host, _):
        err = refused(
            tmp_path,
            capsys,
            [p, "--tracking-uri", f"http://kd:{SECRET}@{host}"],
            1,
            [f"kdtrain: error: the MLflow tracking server http://{host} refused the credentials (HTTP 401)"],
            secret=SECRET,
        )
    assert len(err.strip().splitlines()) == 1


def test_correct_credentials_pass_the_reachability_check(clean_env):
    good = "Basic " + base64.b64encode(f"kd:{SECRET}".encode()).decode()
    with http_server(lambda headers: 200 if headers.get("Authorization") == good else 401) as (host, _):
        check_reachable(f"http://kd:{SECRET}@{host}")


def test_a_quote_in_a_values_of_an_mlflow_search_is_quoted_safely():
    assert literal("plain") == "'plain'" and literal("bob's-sweep") == '"bob\'s-sweep"'
    with pytest.raises(Exception, match="both kinds of quote"):
        literal("""a'b"c""")


def test_a_sweep_named_with_a_quote_finishes_and_logs_every_run(tiny_sweep, tmp_path):
    """MLflow raised "Invalid clause(s)" on the first lookup by study name, after the teachers had trained."""
    text = tiny_sweep.read_text().replace("study: {name: tiny}", 'study: {name: "bob\'s-sweep", trials: 2}')
    tiny_sweep.write_text(text + "search:\n  kd.alpha: {type: float, low: 0, high: 1}\n")
    assert main(["sweep", str(tiny_sweep), "--no-report"]) == 0
    runs, _ = Tracker(f"sqlite:///{tmp_path}/home/mlflow.db").runs_frame("bob's-sweep")
    roles = runs["tag:kdtrain.role"].value_counts().to_dict()
    assert roles["student"] == 2 and roles["teacher"] == 2 and roles["sweep"] == 1
    assert set(runs["status"]) == {"FINISHED"}


def test_a_study_name_with_both_quotes_is_refused_up_front(tiny_sweep, capsys):
    tiny_sweep.write_text(
        tiny_sweep.read_text().replace("study: {name: tiny}", """study: {name: 'a"b''c'}""")
        + "search:\n  kd.alpha: {type: float, low: 0, high: 1}\n"
    )
    assert main(["sweep", str(tiny_sweep), "--no-report"]) == 2
    assert "must not hold both ' and \"" in capsys.readouterr().err


def _self_signed(folder):
    """A certificate for 127.0.0.1 signed by itself (a private CA's server, as a company's MLflow often is)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture
def tls_mlflow(start_mlflow_server, tmp_path, monkeypatch):
    """A real `mlflow server` on https://127.0.0.1 with a self-signed certificate; stopped afterwards (the group
    goes 2 s after SIGTERM: uvicorn waits on a half-done TLS handshake)."""
    cert, key = _self_signed(tmp_path)
    server = start_mlflow_server(tmp_path / "mlflow-server", tls=(cert, key))
    for k in (
        "MLFLOW_TRACKING_SERVER_CERT_PATH",
        "MLFLOW_TRACKING_INSECURE_TLS",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
    ):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    return server.url, cert


def test_a_tls_server_with_its_own_ca_passes_the_preflight_when_mlflow_is_told(tls_mlflow, monkeypatch):
    """The pre-flight used plain urllib and the system's CAs: a server that MLflow's client reaches with
    MLFLOW_TRACKING_SERVER_CERT_PATH (or MLFLOW_TRACKING_INSECURE_TLS) was refused."""
    from kdtrain.config import KdtrainError
    from kdtrain.tracking.client import check_reachable

    url, cert = tls_mlflow
    with pytest.raises(KdtrainError, match=r"certificate.*MLFLOW_TRACKING_SERVER_CERT_PATH"):
        check_reachable(url)  # untrusted: refused, saying what to set
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
    check_reachable(url)
    Tracker(url).experiment("tls-check")  # and MLflow's own client agrees
    monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH")
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    check_reachable(url)


def test_a_ctrl_c_during_a_local_store_write_lets_the_write_finish_then_stops(tmp_path):
    """A Ctrl-C (SIGINT) that lands inside an MLflow SQLite write: the write lands whole, then the stop is raised,
    and the closing writes after it go through at once. Cut inside SQLAlchemy (at its second commit: MLflow's
    set_tags commits a session inside a session), the write once left a connection holding the database's lock:
    the trial's KILLED close waited out SQLite's 20 s busy timeout and the sweep ended with 'the study's storage
    is unreachable (database is locked)' and exit 1 instead of 130 (seen in CI)."""
    import signal

    from mlflow.tracking import MlflowClient
    from sqlalchemy import event

    from kdtrain.tracking.client import Tracker

    for cut in range(3):  # the stop at each of the write's commits
        t = Tracker(f"sqlite:///{tmp_path / f'mlflow-{cut}.db'}")
        run = t.start(t.experiment("stop"), "trial-0", "student", params={})
        engine = MlflowClient(t.uri)._tracking_client.store.engine
        commits = []

        def sigint_inside(conn, cut=cut, commits=commits):
            commits.append(conn)
            if len(commits) == cut + 1:
                os.kill(os.getpid(), signal.SIGINT)  # raised at the next bytecode: inside SQLAlchemy, mid-write

        event.listen(engine, "commit", sigint_inside)
        try:
            with pytest.raises(KeyboardInterrupt):
                t.set_tags(run, {"optuna.state": "RUNNING", "note": "cut"})
        finally:
            event.remove(engine, "commit", sigint_inside)
        started = time.time()
        t.set_tags(run, {"optuna.state": "FAIL"})  # what the interrupted trial's close writes next
        t.end(run, "KILLED")
        assert time.time() - started < 5, cut  # no lock left behind to wait out
        got = MlflowClient(t.uri).get_run(run)
        assert got.data.tags.get("note") == "cut", cut  # the cut write landed whole
        assert got.data.tags["optuna.state"] == "FAIL" and got.info.status == "KILLED"
