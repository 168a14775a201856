"""`llm-train-api` itself: the command list, lazy loading (a client command imports no
server code), and `up` (the API and a worker together; it announces the URL only once the
API answers, and Ctrl-C leaves no process behind)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from llm_train_api.cli.main import COMMANDS, main
from tests.helpers.servers import REPO_ROOT, free_port

SERVER_PACKAGES = ("flask", "sqlalchemy", "torch", "werkzeug")


def descendants(pid: int) -> set[int]:
    found, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
        kids = {int(p) for p in out.stdout.split()}
        found |= kids
        frontier += kids
    return found


def test_help_lists_every_command_without_importing_any(tmp_path):
    code = ("import sys\nfrom llm_train_api.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('llm_train_api.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    *help_lines, loaded = out.stdout.splitlines()
    commands = help_lines[help_lines.index("Commands:") + 1:]
    listed = {line.split()[0]: " ".join(line.split()[1:]) for line in commands}
    assert list(listed) == list(COMMANDS)
    for name, (_, help_text) in COMMANDS.items():  # cut to the terminal's width by click
        assert listed[name] and help_text.startswith(listed[name].removesuffix("...")), name
    assert eval(loaded) == ["llm_train_api.cli", "llm_train_api.cli.main",
                            "llm_train_api.config"]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_listed_help_line_is_the_commands_own(name):
    command = main.get_command(None, name)
    assert command is not None and command.name == name
    assert command.get_short_help_str(limit=1000) == COMMANDS[name][1]


class _EmptyJobs(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_client_command_imports_no_server_code(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmptyJobs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    code = ("import sys\nfrom llm_train_api.cli.main import main\n"
            "try:\n    main(['jobs', 'list', '--json'])\nexcept SystemExit as exc:\n"
            "    assert not exc.code, exc.code\n"
            "import json\nprint(json.dumps(sorted(sys.modules)))")
    env = {**os.environ, "LLM_TRAIN_API_URL": f"http://127.0.0.1:{server.server_port}",
           "LLM_TRAIN_API_TOKEN": "t"}
    try:
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.splitlines()[-1])
    assert not [m for m in loaded if m.split(".")[0] in SERVER_PACKAGES]
    ours = {m for m in loaded if m.startswith("llm_train_api.")}
    allowed = ("llm_train_api.cli", "llm_train_api.client", "llm_train_api.config")
    assert ours and all(m.startswith(allowed) for m in ours), sorted(ours)
    assert not {m for m in ours if m.startswith("llm_train_api.cli.")} - {
        "llm_train_api.cli.main", "llm_train_api.cli.jobs", "llm_train_api.cli.common",
        "llm_train_api.cli.progress", "llm_train_api.cli.jobs_checkpoints"}


@pytest.mark.parametrize("command", [["tokens", "list"], ["worker"]])
def test_a_server_command_without_the_server_install_says_so_in_one_line(tmp_path, command):
    # As in a client-only install: the server's dependencies cannot be imported.
    code = ("import sys\nsys.modules['sqlalchemy'] = None\n"
            "from llm_train_api.cli.main import main\nmain()")
    out = subprocess.run([sys.executable, "-c", code, *command], cwd=tmp_path,
                         env={**os.environ, "LLM_TRAIN_API_INSTANCE_PATH": str(tmp_path)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith(f"Error: `{command[0]}` needs sqlalchemy, which is not "
                                 "installed here"), out.stderr
    assert out.stderr.count("\n") == 1


def up_env(tmp_path) -> dict[str, str]:
    return {**os.environ, "LLM_TRAIN_API_INSTANCE_PATH": str(tmp_path),
            "LLM_TRAIN_API_WORKERS": "2", "LLM_TRAIN_API_POLL_S": "0.2",
            "LLM_TRAIN_API_TRAINER_THREADS": "1", "LLM_TRAIN_API_ACCESS_LOG": ""}


def test_up_serves_runs_a_job_and_stops_cleanly_on_ctrl_c(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_train_api.cli", "up", "--bind", f"127.0.0.1:{port}"],
        cwd=REPO_ROOT, env=up_env(tmp_path), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        # `up` announces the URL once the API answers, then the lines for the CLI: the URL
        # export and (first start) the admin token it wrote.
        lines: list[str] = []
        while not any("export LLM_TRAIN_API_TOKEN=" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            if f"listening on {url}" in line:
                # Said only once the API answers: no retry needed.
                assert requests.get(url + "/healthz", timeout=5).status_code == 200
        listening = next(i for i, line in enumerate(lines) if f"listening on {url}" in line)
        token = (tmp_path / "admin-token").read_text().strip()
        announced = [line.strip() for line in lines[listening:]]
        assert f"export LLM_TRAIN_API_URL={url}" in announced
        assert f"export LLM_TRAIN_API_TOKEN={token}" in announced
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {token}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        body = {"job_id": "demo", "model_name": "gpt-nano", "dataset": "builtin:tinytext",
                "hyperparameters": {"max_steps": 5, "epochs": 100, "batch_size": 4,
                                    "block_size": 32}}
        assert http.post(url + "/jobs", json=body, timeout=10).status_code == 201
        deadline = time.monotonic() + 60
        while http.get(url + "/jobs/demo", timeout=5).json()["status"] != "succeeded":
            assert time.monotonic() < deadline, "the job did not run"
            time.sleep(0.3)
        family = descendants(proc.pid)
        assert len(family) >= 3  # gunicorn master + its workers + the job worker
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=40) == 0
        time.sleep(0.5)
        left = {pid for pid in family if os.path.exists(f"/proc/{pid}")}
        assert not left, f"orphans after Ctrl-C: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


def test_up_on_a_port_in_use_fails_without_saying_listening(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "llm_train_api.cli", "up", "--bind", f"127.0.0.1:{port}"],
            cwd=REPO_ROOT, env=up_env(tmp_path), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    assert proc.returncode != 0, output
    assert "listening" not in output
    assert "Error: the API server (gunicorn) exited with status" in output
    assert "LLM_TRAIN_API_URL" not in output
    # Nothing left behind: the worker `up` had started is gone too.
    time.sleep(0.5)
    assert not processes_with(f"LLM_TRAIN_API_INSTANCE_PATH={tmp_path}")


@pytest.mark.parametrize("victim", ["worker", "api"])
def test_up_says_which_child_died_and_exits_non_zero(tmp_path, victim):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_train_api.cli", "up", "--bind", f"127.0.0.1:{port}"],
        cwd=REPO_ROOT, env=up_env(tmp_path), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines: list[str] = []
        while not any(f"listening on {url}" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        children = {int(p) for p in subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()}
        commands = {pid: open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                    for pid in children}
        worker = next(pid for pid, argv in commands.items() if b"worker" in argv)
        api = next(pid for pid, argv in commands.items() if b"gunicorn" in argv)
        family = {pid: started(pid) for pid in descendants(proc.pid)}
        os.kill(worker if victim == "worker" else api, signal.SIGKILL)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    said = {"worker": "Error: the worker was killed by SIGKILL; stopping the API server",
            "api": "Error: the API server (gunicorn) was killed by SIGKILL; stopping the "
                   "worker"}[victim]
    assert said in output, output
    assert proc.returncode == 128 + signal.SIGKILL, output
    # Nothing left running: the other child and the gunicorn workers are gone too (a
    # gunicorn worker whose master was killed notices within a second or so).
    deadline = time.monotonic() + 15
    while left := (processes_with(f"LLM_TRAIN_API_INSTANCE_PATH={tmp_path}")
                   + [pid for pid, start in family.items() if started(pid) == start]):
        assert time.monotonic() < deadline, f"left running after the {victim} died: {left}"
        time.sleep(0.2)


def started(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot), so that a reused pid is not taken for
    the process it once was; None once it is gone or a zombie not yet reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def processes_with(env_entry: str) -> list[int]:
    """Live processes whose environment holds `env_entry` (those this test started)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if env_entry.encode() in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found
