"""Every user error on every subcommand: exit 2 (usage or configuration) or 1 (run time), one
line on stderr naming the flag, file or organisation at fault, never a traceback.

Every case runs ``cli.main`` in this process (argparse errors end in SystemExit, as they do
for the console script). What needs a real process (Ctrl-C exits 130 saying how to go on, a
reader closing stdout early ends the command quietly with 141, the console script's exit
code) is in tests/e2e/test_cli_processes.py.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
import yaml

from fedmuscle_secure.cli.main import main
from helpers.cli_world import make_world, one_line
from helpers.paths import REPO


def run_main(argv: list[str]) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: usage errors and --help
        return int(exc.code or 0)


def unwritable(tmp: Path) -> Path:
    """A directory path nobody here can create: a read-only folder for a normal user; for
    root (which ignores permission bits) a path under /sys, which refuses new entries."""
    if os.geteuid() != 0:
        ro = tmp / "read-only"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "out"
    else:
        target = Path("/sys") / "fedmuscle-secure-test-out"
    try:
        os.rmdir(tempfile.mkdtemp(dir=target.parent))
    except OSError:
        return target
    pytest.fail(f"{target.parent} is writable here; the test needs a folder that is not")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    return make_world(tmp_path_factory.mktemp("world"))


def _server(w, out, *extra):
    return ["server", "--config", w["config"], "--certs", w["certs"], "--listen",
            "127.0.0.1:0", "--out", out, *extra]


def _client(w, out, *extra, org="a", certs=None):
    return ["client", "--config", w["config"], "--org", org, "--certs", certs or w["org_a"],
            "--server", "127.0.0.1:1", "--out", out, *extra]


# --- numeric and address flags: argparse validators, exit 2 -------------------------------

BAD_FLAGS = [
    ("run", "--threads", "0"), ("run", "--threads", "-2"), ("run", "--threads", "two"),
    ("run", "--seed", "-1"),
    ("compare", "--threads", "0"), ("compare", "--jobs", "0"), ("compare", "--jobs", "-1"),
    ("server", "--threads", "0"), ("server", "--threads", "-2"),
    ("server", "--stage-timeout", "-1"), ("server", "--connect-timeout", "0"),
    ("server", "--round-timeout", "nan"), ("server", "--max-message-bytes", "0"),
    ("server", "--keepalive-ms", "-5"), ("server", "--listen", "127.0.0.1:99999"),
    ("server", "--listen", "no-port"),
    ("client", "--threads", "-2"), ("client", "--retry-initial", "0"),
    ("client", "--retry-deadline", "-1"), ("client", "--server", "127.0.0.1"),
    ("provision", "--days", "0"),
]


@pytest.mark.parametrize(("command", "flag", "value"), BAD_FLAGS)
def test_a_bad_flag_value_is_one_usage_line(world, tmp_path, capsys, command, flag, value):
    argv = {"run": ["run", world["config"], "--out", tmp_path / "o"],
            "compare": ["compare", world["grid"], "--out", tmp_path / "o"],
            "server": _server(world, tmp_path / "o"),
            "client": _client(world, tmp_path / "o"),
            "provision": ["provision", "init", "--project", world["bad"], "--out",
                          tmp_path / "o"]}[command]
    if flag in argv:  # replace the fixture's value
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    assert run_main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert flag in line and repr(value) in line


def test_threads_zero_is_an_error_not_all_threads(world, tmp_path, capsys):
    assert run_main(["run", world["config"], "--out", tmp_path / "o", "--threads", "0"]) == 2
    assert "expected a positive integer, got '0'" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()  # stopped before anything ran


# --- --out: a file, or not writable, on every command that writes one ----------------------

OUT_COMMANDS = {
    "run": lambda w, out: ["run", w["config"], "--out", out, "--no-progress"],
    "compare": lambda w, out: ["compare", w["grid"], "--out", out, "--no-progress"],
    "server": lambda w, out: _server(w, out),
    "client": lambda w, out: _client(w, out),
    "provision init": lambda w, out: ["provision", "init", "--project",
                                      w["root"] / "project.yaml", "--out", out],
    "provision csr": lambda w, out: ["provision", "csr", "--org", "x", "--out", out],
    "provision identity": lambda w, out: ["provision", "identity", "--client-id", "x",
                                          "--out", out],
}


@pytest.fixture(scope="module")
def project(world) -> Path:
    path = world["root"] / "project.yaml"
    path.write_text(yaml.safe_dump({
        "name": "p", "server": {"name": "s", "hosts": ["localhost"]},
        "organizations": [{"name": "a", "client_id": "a"}]}))
    return path


@pytest.mark.parametrize("command", sorted(OUT_COMMANDS))
def test_out_naming_a_file_is_one_line(world, project, capsys, command):
    assert run_main(OUT_COMMANDS[command](world, world["file"])) == 2
    line = one_line(capsys.readouterr().err)
    assert "--out" in line and str(world["file"]) in line and "is a file" in line


@pytest.mark.parametrize("command", sorted(OUT_COMMANDS))
def test_out_that_cannot_be_written_is_one_line(world, project, tmp_path, capsys, command):
    out = unwritable(tmp_path)
    assert run_main(OUT_COMMANDS[command](world, out)) == 2
    line = one_line(capsys.readouterr().err)
    assert "--out" in line and str(out) in line and "cannot write" in line
    assert not out.exists()


def test_run_out_holding_a_run_or_nothing_to_resume(world, tmp_path, capsys):
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "events.jsonl").write_text("{}\n")
    assert run_main(["run", world["config"], "--out", tmp_path / "held"]) == 2
    assert "already holds a run; pass --resume" in one_line(capsys.readouterr().err)
    (tmp_path / "empty").mkdir()
    assert run_main(["run", world["config"], "--out", tmp_path / "empty", "--resume"]) == 2
    assert "nothing to resume" in one_line(capsys.readouterr().err)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.resolved.yaml").write_text("name: another-run\n")
    assert run_main(["run", world["config"], "--out", tmp_path / "other", "--resume"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "CONFIG: differs from the config" in line and "config.resolved.yaml" in line


# --- inputs: configs, grids, certificate folders ------------------------------------------

@pytest.mark.parametrize("which", ["missing", "folder", "bad"])
@pytest.mark.parametrize("command", ["run", "compare", "server", "client", "provision ckks",
                                     "provision init"])
def test_a_missing_or_malformed_input_file_is_one_line(world, tmp_path, capsys, command, which):
    path = {"missing": tmp_path / "nope.yaml", "folder": tmp_path,
            "bad": world["bad"]}[which]
    argv = {"run": ["run", path, "--out", tmp_path / "o"],
            "compare": ["compare", path, "--out", tmp_path / "o"],
            "server": _server(world, tmp_path / "o"),
            "client": _client(world, tmp_path / "o"),
            "provision ckks": ["provision", "ckks", "--config", path, "--out", tmp_path / "o"],
            "provision init": ["provision", "init", "--project", path, "--out",
                               tmp_path / "o"]}[command]
    if command in ("server", "client"):
        argv[argv.index("--config") + 1] = path
    assert run_main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert str(path) in line
    assert {"missing": "does not exist", "folder": "not a file",
            "bad": "line 2, column 1"}[which] in line


@pytest.mark.parametrize("command", ["server", "client"])
def test_a_missing_certs_folder_is_one_line(world, tmp_path, capsys, command):
    argv = _server(world, tmp_path / "o") if command == "server" else _client(world,
                                                                               tmp_path / "o")
    argv[argv.index("--certs") + 1] = tmp_path / "no-certs"
    assert run_main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert "--certs" in line and "no-certs does not exist" in line


def test_client_with_the_certs_of_another_organisation_names_both(world, tmp_path, capsys):
    """``client --org b --certs <a's folder>`` used to end in a FileNotFoundError traceback."""
    assert run_main(_client(world, tmp_path / "o", org="b")) == 2
    line = one_line(capsys.readouterr().err)
    assert "--certs" in line and "no certificate for organisation 'b'" in line
    assert "certificates of ['a']" in line
    assert not (tmp_path / "o").exists()


def test_client_of_an_organisation_not_in_the_config(world, tmp_path, capsys):
    assert run_main(_client(world, tmp_path / "o", org="zed")) == 2
    assert "--org: 'zed' is not a client of the config" in one_line(capsys.readouterr().err)


def test_server_certs_without_the_server_key(world, tmp_path, capsys):
    assert run_main(_server(world, tmp_path / "o", "--certs", world["org_a"])) == 2
    line = one_line(capsys.readouterr().err)
    assert "server.crt is missing" in line and "--certs" in line


def test_server_on_a_port_in_use_names_the_address(world, tmp_path, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = _server(world, tmp_path / "o")
        argv[argv.index("--listen") + 1] = f"127.0.0.1:{port}"
        assert run_main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert f"--listen: cannot listen on 127.0.0.1:{port}: Address already in use" in line


@pytest.mark.parametrize("action", [["list"], ["crl"], ["revoke", "a"]])
@pytest.mark.parametrize("which", ["missing", "file", "empty"])
def test_provision_on_a_folder_that_is_no_ca(world, tmp_path, capsys, action, which):
    ca = {"missing": tmp_path / "nope", "file": world["file"], "empty": tmp_path}[which]
    assert run_main(["provision", action[0], "--ca", ca, *action[1:]]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--ca" in line and str(ca) in line


def test_provision_sign_into_a_folder_that_cannot_be_written(world, tmp_path, capsys):
    assert run_main(["provision", "csr", "--org", "lab-x", "--out", tmp_path]) == 0
    out = unwritable(tmp_path) / "lab-x.crt"
    capsys.readouterr()
    assert run_main(["provision", "sign", "--ca", world["certs"], "--csr",
                     tmp_path / "lab-x.csr", "--client-id", "lab-x", "--cert-out", out]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--cert-out" in line and "cannot write" in line


def test_provision_identity_with_a_bad_name_names_the_flag(tmp_path, capsys):
    assert run_main(["provision", "identity", "--client-id", "../x", "--out", tmp_path]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("fedmuscle-secure: config error: --client-id:") and "--force" not in line


@pytest.mark.parametrize("target", ["empty", "missing"])
def test_audit_of_a_folder_without_ledgers(tmp_path, capsys, target):
    path = tmp_path if target == "empty" else tmp_path / "missing"
    assert run_main(["audit", path]) == 2
    assert str(path) in one_line(capsys.readouterr().err)


def test_compare_with_a_bad_grid_field_or_import(world, tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", "base": str(world["config"]), "seeds": [0],
                                    "grids": [{"methd": ["muscle"]}]}))
    assert run_main(["compare", grid, "--out", tmp_path / "o", "--dry-run"]) == 2
    assert "methd" in one_line(capsys.readouterr().err)
    assert run_main(["compare", world["grid"], "--out", tmp_path / "o", "--report-only",
                     "--import", tmp_path / "nowhere"]) == 2
    assert "--import" in one_line(capsys.readouterr().err)


def test_the_readme_exit_code_table_lists_every_code_the_cli_returns():
    from fedmuscle_secure.cli import exits as cli_errors
    from fedmuscle_secure.records.audit import EXIT_CODES

    readme = (REPO / "README.md").read_text()
    cells = [re.split(r"(?<!\\)\|", line) for line in readme.splitlines()
             if line.startswith("| ")]
    rows = {c[1].strip(): "|".join(c) for c in cells if len(c) == 4}
    for code in (0, cli_errors.EXIT_RUNTIME, cli_errors.EXIT_USAGE,
                 cli_errors.EXIT_INTERRUPTED, cli_errors.EXIT_PIPE):
        assert str(code) in rows, f"no README row for exit code {code}"
    audit_codes = sorted(c for c in EXIT_CODES.values() if c >= 10)
    assert f"{audit_codes[0]}-{audit_codes[-1]}" in rows
    for code in audit_codes:
        assert f" {code} " in rows[f"{audit_codes[0]}-{audit_codes[-1]}"], code
