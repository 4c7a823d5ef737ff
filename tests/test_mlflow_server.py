"""The MLflow server as the cluster runs it (k8s/base/mlflow.yaml), with real processes on 127.0.0.1: a throw-away
PostgreSQL (Debian's `postgresql` package, as the `postgres` user when the tests run as root), the Deployment's own
init container writing the basic-auth configuration, `mlflow server --app-name basic-auth` with the Deployment's
arguments, and the mlflow-users Job creating the application's user.

Then the registry round trip of relightful.tracking (register, aliases, the promotion gate and its race patterns
from tests/test_tracking.py, plus promotions running at the same time in threads) signed in as that user, and the
authentication itself: an unauthenticated or wrongly authenticated write is refused with 401, an authenticated one
is accepted, the application's user cannot administer users. Skipped, with the reason, only where PostgreSQL's
server programs are missing (`apt-get install postgresql`, done by `make install` as root).
"""

from __future__ import annotations

import base64
import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from relightful.tracking.promotion import CHAMPION, PromoteConfig, promote
from relightful.tracking.runs import make_client

from services import clean_env, free_port, serve
from test_deploy import _copy_tree_with_credentials, _expand, _one, _pod_specs, render_minimal
from test_tracking import quality_scorer, register_fakes

pytest.importorskip("psycopg2", reason="psycopg2-binary (the mlops extra) is not installed")

BIN = Path(sys.executable).parent
MODEL = "relightful-stage3"
CFG = PromoteConfig(metric="fg_psnr", margin=0.5)
# characters that must survive URL-encoding in the Secret's URLs and configparser's interpolation in the auth ini
PG_PASSWORD = "pg pass%@/x:1"
ADMIN = {"MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-password-for-tests-42",
         "MLFLOW_FLASK_SERVER_SECRET_KEY": "flask-secret-key-for-tests"}
APP_USER = {"MLFLOW_TRACKING_USERNAME": "relightful", "MLFLOW_TRACKING_PASSWORD": "app-password-for-tests-42"}


# --- PostgreSQL ----------------------------------------------------------------------------------------------------

def _pg_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    return Path(dirs[-1]) if dirs else None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL cluster on 127.0.0.1 with password (scram) authentication and a database `mlflow`; yields the
    SQLAlchemy URL the Secret's MLFLOW_BACKEND_STORE_URI would hold."""
    bindir = _pg_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        pytest.skip("PostgreSQL's server programs are missing: apt-get install postgresql (make install does it as "
                    "root)")
    as_root = os.geteuid() == 0
    if as_root:  # PostgreSQL refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
        run_as = ["runuser", "-u", "postgres", "--"]
    else:
        run_as = []
    # not under pytest's tmp_path: its parents are private to root, and the server runs as `postgres`
    root = Path(tempfile.mkdtemp(prefix="relightful-pg-"))
    data, sock, log = root / "data", root / "sock", root / "postgres.log"
    pwfile = root / "pwfile"
    pwfile.write_text(PG_PASSWORD + "\n")
    sock.mkdir()
    if as_root:
        for p in (root, sock, pwfile):
            os.chown(p, owner.pw_uid, owner.pw_gid)
    port = free_port()
    try:
        subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "mlflow", f"--pwfile={pwfile}",
                        "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                        f"-h 127.0.0.1 -p {port} -k {sock} -c fsync=off -c max_connections=100", "start"],
                       check=True, capture_output=True, timeout=90)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        detail = getattr(e, "stderr", b"") or b""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {detail.decode(errors='replace')[-2000:]}")
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", password=PG_PASSWORD, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        yield {"port": port,
               "uri": f"postgresql+psycopg2://mlflow:{urllib.parse.quote(PG_PASSWORD, safe='')}@127.0.0.1:{port}/mlflow"}
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _sql(postgres, query: str) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(host="127.0.0.1", port=postgres["port"], user="mlflow", password=PG_PASSWORD,
                          dbname="mlflow") as conn, conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchall()


# --- the Deployment's MLflow server ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> list[dict]:
    tree = _copy_tree_with_credentials(tmp_path_factory.mktemp("k8s"))
    return render_minimal(tree / "overlays" / "local")


def _run_script(container: dict, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A `python -c SCRIPT` container of the manifests, run by this interpreter."""
    assert container["command"][:2] == ["python", "-c"]
    return subprocess.run([sys.executable, "-c", container["command"][2]], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def server(postgres, manifests, tmp_path_factory):
    """The MLflow Deployment's containers on 127.0.0.1: its init container writes the auth ini, its server runs with
    its arguments (port, host and the artifact destination changed) on the PostgreSQL above, and the mlflow-users
    Job creates the application's user. Yields the URL."""
    root = tmp_path_factory.mktemp("mlflow-pg")
    (spec,) = _pod_specs(_one(manifests, "Deployment", "mlflow")).values()
    (init,) = spec["initContainers"]
    (c,) = spec["containers"]
    secret_env = {"MLFLOW_BACKEND_STORE_URI": postgres["uri"], "MLFLOW_AUTH_DATABASE_URI": postgres["uri"], **ADMIN}
    ini = root / "basic_auth.ini"
    init_env = {e["name"]: secret_env[e["valueFrom"]["secretKeyRef"]["key"]] if "valueFrom" in e else e["value"]
                for e in init["env"]}
    out = _run_script(init, clean_env(**{**init_env, "MLFLOW_AUTH_CONFIG_PATH": str(ini)}))
    assert out.returncode == 0, out.stderr
    assert oct(ini.stat().st_mode & 0o777) == "0o600"  # it holds the database password
    env = {}
    for e in c["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            env[e["name"]] = secret_env.get(ref["key"], "test")  # S3 keys: unused with local artifacts
        elif "value" in e:
            env[e["name"]] = e["value"]
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), TMPDIR=str(root), HOME=str(root / "home"))
    env.pop("MLFLOW_S3_ENDPOINT_URL", None)
    port = free_port()
    args = []
    for a in c["args"]:
        a = _expand(a, env)
        if a.startswith("--port="):
            a = f"--port={port}"
        elif a.startswith("--host="):
            a = "--host=127.0.0.1"
        elif a.startswith("--artifacts-destination="):
            a = f"--artifacts-destination={root / 'artifacts'}"
        args.append(a)
    assert f"--backend-store-uri={postgres['uri']}" in args and "--app-name=basic-auth" in args
    url = f"http://127.0.0.1:{port}"
    with serve([str(BIN / "mlflow"), "server", *args], clean_env(**env), root / "server.log", f"{url}/health",
               timeout=180):
        job = _one(manifests, "Job", "mlflow-users")
        (jspec,) = _pod_specs(job).values()
        (jc,) = jspec["containers"]
        job_env = clean_env(MLFLOW_TRACKING_URI=url, **{k: ADMIN[k] for k in ("MLFLOW_AUTH_ADMIN_USERNAME",
                                                                           "MLFLOW_AUTH_ADMIN_PASSWORD")}, **APP_USER)
        for _ in range(2):  # a re-applied Job finds the user and sets its password again
            out = _run_script(jc, job_env)
            assert out.returncode == 0, out.stdout + out.stderr
        yield url


def _call(url: str, method: str, path: str, body: dict | None = None, user: tuple[str, str] | None = None,
          host: str | None = None) -> int:
    headers = {"Content-Type": "application/json", **({"Host": host} if host else {})}
    if user:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url + path, data=data, method=method, headers=headers),
                                    timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


APP = (APP_USER["MLFLOW_TRACKING_USERNAME"], APP_USER["MLFLOW_TRACKING_PASSWORD"])


def test_basic_auth_refuses_unauthenticated_writes_and_accepts_the_application_user(server, postgres):
    create = "/api/2.0/mlflow/experiments/create"
    assert _call(server, "GET", "/health") == 200  # the probes need no user
    assert _call(server, "POST", create, {"name": "intruder"}) == 401
    assert _call(server, "POST", create, {"name": "intruder"}, user=(APP[0], "wrong-password-123")) == 401
    assert _call(server, "GET", "/api/2.0/mlflow/experiments/search?max_results=5") == 401
    assert _call(server, "POST", create, {"name": "auth-check"}, user=APP) == 200
    # the Deployment's --allowed-hosts: its tracking URI's host is answered, another name is refused
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    assert _call(server, "GET", search, user=APP, host="mlflow.relightful.svc.cluster.local:5000") == 200
    assert _call(server, "GET", search, user=APP, host="evil.example:5000") == 403
    # the application's user is not an admin: it cannot create users or change another's password
    assert _call(server, "POST", "/api/2.0/mlflow/users/create", {"username": "x", "password": "x-password-123"},
                 user=APP) == 403
    # the users and the experiment are in PostgreSQL
    assert {r[0] for r in _sql(postgres, "SELECT username FROM users")} == {"admin", "relightful"}
    assert ("auth-check",) in _sql(postgres, "SELECT name FROM experiments")
    # ... and MLflow's client signs in from MLFLOW_TRACKING_USERNAME/PASSWORD (what the pods get from the Secret)
    env = clean_env(MLFLOW_TRACKING_URI=server, **APP_USER)
    code = "import mlflow; print(mlflow.MlflowClient().get_experiment_by_name('auth-check').name)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "auth-check", out.stderr[-2000:]
    env.pop("MLFLOW_TRACKING_PASSWORD")
    out = subprocess.run([sys.executable, "-c", code], env={**env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "401" in out.stderr


# --- the registry, signed in as the application's user -----------------------------------------------------------

@pytest.fixture
def app_env(server, monkeypatch):
    """This process signed in as the application's user, with no registered model MODEL left from another test."""
    for k in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    for k, v in APP_USER.items():
        monkeypatch.setenv(k, v)
    client = make_client(server)
    if client.search_registered_models(f"name='{MODEL}'"):
        client.delete_registered_model(MODEL)
    return server


def _register(tmp_path: Path, uri: str, qualities: list[float]) -> list[str]:
    return register_fakes(tmp_path, uri, 3, qualities)


def test_registry_round_trip_on_postgres(app_env, postgres, tmp_path):
    v1, v2, v3 = _register(tmp_path, app_env, [20.0, 21.0, 20.8])
    client = make_client(app_env)
    first = promote(MODEL, quality_scorer(), CFG, version=v1)
    assert (first.decision, first.champion_after) == ("champion", v1)
    second = promote(MODEL, quality_scorer(), CFG, version=v2)
    assert (second.decision, second.champion_before, second.champion_after) == ("champion", v1, v2)
    third = promote(MODEL, quality_scorer(), CFG, version=v3)  # 20.8 does not beat 21.0 by 0.5
    assert (third.decision, third.champion_after) == ("challenger", v2)
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == v2
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == v3
    mv = client.get_model_version(MODEL, v2)
    assert mv.tags["data_version"] == "d" and mv.tags["git_commit"] == "c" and mv.tags["stage"] == "3"
    assert mv.tags["promotion.decision"] == "champion" and mv.tags["promotion.compared_to_version"] == v1
    # the registry is PostgreSQL's: the aliases as rows
    rows = _sql(postgres, f"SELECT alias, version FROM registered_model_aliases WHERE name = '{MODEL}'")
    assert {a: str(v) for a, v in rows} == {CHAMPION: v2, "challenger": v3}
    # a re-run changes nothing
    again = promote(MODEL, quality_scorer(), CFG, version=v2)
    assert again.decision == "unchanged" and not again.changed


def test_promotion_race_never_demotes_a_newer_champion_on_postgres(app_env, tmp_path):
    """tests/test_tracking.py's race: while v2 is scored, another gate promotes v3."""
    v1, v2, v3 = _register(tmp_path, app_env, [20.0, 25.0, 22.0])
    promote(MODEL, quality_scorer(), CFG, version=v1)

    def other_gate(n_calls: int) -> None:
        if n_calls == 0:
            assert promote(MODEL, quality_scorer(), CFG, version=v3).decision == "champion"

    result = promote(MODEL, quality_scorer([], before=other_gate), CFG, version=v2)
    client = make_client(app_env)
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == v3
    assert (result.decision, result.champion_before, result.champion_after) == ("challenger", v3, v3)
    tags = client.get_model_version(MODEL, v2).tags
    assert tags["promotion.compared_to_version"] == v3 and float(tags["promotion.champion_metrics.fg_psnr"]) == 22.0


def test_promotion_gives_champion_back_in_the_alias_window_on_postgres(app_env, tmp_path):
    """tests/test_tracking.py's other race: the other gate finishes between this gate's last champion read and its
    alias move; the newer champion is restored right after."""
    v1, v2, v3 = _register(tmp_path, app_env, [20.0, 25.0, 26.0])
    promote(MODEL, quality_scorer(), CFG, version=v1)
    real = make_client(app_env)

    class Racing:
        def __init__(self):
            self.fired = False

        def __getattr__(self, name):
            return getattr(real, name)

        def set_registered_model_alias(self, name, alias, version):
            if not self.fired and alias == CHAMPION and version == v2:
                self.fired = True
                assert promote(MODEL, quality_scorer(), CFG, version=v3).champion_after == v3
            return real.set_registered_model_alias(name, alias, version)

    racing = Racing()
    result = promote(MODEL, quality_scorer(), CFG, version=v2, client=racing)
    assert racing.fired and result.decision == "champion" and result.champion_after == v3
    assert str(real.get_model_version_by_alias(MODEL, CHAMPION).version) == v3


def test_concurrent_promotions_leave_the_newest_best_version_champion(app_env, tmp_path):
    """Three gates at once (threads, each its own client) on versions that each beat the one before: whatever the
    interleaving, the newest, best one ends as champion and every gate records a decision."""
    v1, *candidates = _register(tmp_path, app_env, [20.0, 22.0, 24.0, 26.0])
    promote(MODEL, quality_scorer(), CFG, version=v1)
    start = threading.Barrier(len(candidates))
    results, errors = {}, []

    def gate(v: str) -> None:
        try:
            start.wait(timeout=60)
            results[v] = promote(MODEL, quality_scorer(), CFG, version=v)
        except BaseException as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=gate, args=(v,)) for v in candidates]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    client = make_client(app_env)
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == candidates[-1]
    for v in candidates:
        assert client.get_model_version(MODEL, v).tags["promotion.decision"] in ("champion", "challenger")
