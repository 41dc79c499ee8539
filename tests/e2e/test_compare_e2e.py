"""``fedmuscle-secure compare`` end to end on a tiny grid: parallel cells, report files,
a failing cell recorded while the others finish, and re-runs that finish only what is
missing (DESIGN §7)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import yaml

from fedmuscle_secure.cli.main import main
from fedmuscle_secure.compare.grid import expand_file
from fedmuscle_secure.compare.runner import read_marker, run_cell
from fedmuscle_secure.config import dump_config
from fedmuscle_secure.errors import RunInterrupted
from fedmuscle_secure.experiment.run import run_experiment
from helpers.tiny import tiny_config


def events(out):
    return [json.loads(line) for line in (out / "compare.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_compare_end_to_end_and_resume(tmp_path, capsys):
    base = tiny_config(**{"training.rounds": 1}).model_dump(mode="json")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(base))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "tinygrid", "base": "tiny.yaml", "seeds": [0, 1],
                                    "grids": [{"method": ["muscle", "pairwise"]}]}))
    out = tmp_path / "out"
    common = [str(grid), "--out", str(out), "--jobs", "2", "--no-progress"]

    assert main(["compare", *common, "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "6 cell(s)" in listed and "pairwise__plain__none__per_batch__s1" in listed

    # 1. only the local and muscle cells (as if the run had been stopped after them); one
    # muscle cell fails (its directory holds another run's config), the others finish
    bad = out / "cells" / "muscle__plain__none__per_batch__s1"
    bad.mkdir(parents=True)
    (bad / "config.resolved.yaml").write_text("name: another-run\n")
    capsys.readouterr()
    assert main(["compare", *common, "--cells", "local__*", "--cells", "muscle__*"]) == 1
    assert "FAILED muscle__plain__none__per_batch__s1" in capsys.readouterr().out
    assert read_marker(bad)["status"] == "failed" and "config differs" in read_marker(bad)["error"]
    done = ["local__none__s0", "local__none__s1", "muscle__plain__none__per_batch__s0"]
    assert sorted(p.name for p in (out / "cells").iterdir()) == sorted([*done, bad.name])
    assert all(read_marker(out / "cells" / c)["status"] == "done" for c in done)
    mtimes = {c: (out / "cells" / c / "cell.json").stat().st_mtime_ns for c in done}

    # 2. after removing the bad directory, a re-run runs only the missing cells
    shutil.rmtree(bad)
    n_before = len(events(out))
    assert main(["compare", *common, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    missing = ["muscle__plain__none__per_batch__s1", "pairwise__plain__none__per_batch__s0",
               "pairwise__plain__none__per_batch__s1"]
    assert sorted(info["done"]) == missing
    assert sorted(info["skipped"]) == done and info["failed"] == {}
    started = [e["cell"] for e in events(out)[n_before:] if e["event"] == "cell_start"]
    assert sorted(started) == missing
    assert {c: (out / "cells" / c / "cell.json").stat().st_mtime_ns for c in done} == mtimes

    # the report covers every cell
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 * 3
    pw = [r for r in rows if r["method"] == "pairwise" and r["seed"] == "1"]
    assert {r["ref_cell"] for r in pw} == {"local__none__s1"}
    assert all(r["local_metric"] not in ("", None) for r in rows)
    md = (out / "results.md").read_text()
    assert "| client | model | task | metric | muscle | pairwise | local |" in md
    assert "Δ (%)" in md and "wins/losses vs local" in md and "Incomplete" not in md
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["communication.png", "per_client__plain__none__per_batch.png"]  # no DP
    assert md.index("## Verdicts") < md.index("| client | model |")

    # report only, published without the cells
    (out / "results.md").unlink()
    pub = tmp_path / "pub"
    assert main(["compare", *common, "--report-only", "--publish", str(pub)]) == 0
    assert sorted(p.name for p in pub.iterdir()) == sorted(["results.csv", "paired.csv",
                                                           "results.md", "cells", *pngs])
    assert (out / "results.md").read_text() == md
    # each finished cell's record, not its checkpoints/ledgers/keys
    assert sorted(p.name for p in (pub / "cells").iterdir()) == sorted([*done, *missing])
    assert sorted(p.name for p in (pub / "cells" / done[2]).iterdir()) == [
        "cell.json", "config.resolved.yaml", "environment.json", "metrics.csv"]
    # the published directory alone regenerates the same tables
    (pub / "results.md").unlink()
    assert main(["compare", str(grid), "--out", str(pub), "--report-only", "--no-progress"]) == 0
    assert (pub / "results.md").read_text() == md

    # another machine takes the published cells and runs only the rest: a record whose
    # config is not this grid's cell's is not taken
    theirs = pub / "cells" / missing[2] / "cell.json"
    theirs.write_text(json.dumps({**json.loads(theirs.read_text()), "config_sha256": "0" * 64}))
    out2 = tmp_path / "out2"
    capsys.readouterr()
    assert main(["compare", str(grid), "--out", str(out2), "--jobs", "2", "--no-progress",
                 "--import", str(pub), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert sorted(info["imported"]) == sorted([*done, *missing[:2]])
    assert info["done"] == [missing[2]] and sorted(info["skipped"]) == sorted(info["imported"])
    assert main(["compare", str(grid), "--out", str(out2), "--import", str(tmp_path / "nope"),
                 "--report-only", "--no-progress"]) == 2
    assert "--import" in capsys.readouterr().err


@pytest.mark.slow
def test_interrupted_cell_is_resumed(tmp_path, monkeypatch):
    base = tiny_config(**{"training.rounds": 2}).model_dump(mode="json")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(base))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", "base": "tiny.yaml", "seeds": [0],
                                    "grids": [{"method": ["muscle"]}]}))
    cell = expand_file(grid).by_id()["muscle__plain__none__per_batch__s0"]
    d = tmp_path / "cells" / cell.id
    with pytest.raises(RunInterrupted):
        run_experiment(cell.config, d, progress=False, stop_after=1)
    marker = run_cell(cell.meta(), dump_config(cell.config), str(d), 1)
    assert marker["status"] == "done" and marker["resumed"] is True
    assert read_marker(d)["final"].keys() == {"a", "b", "c"}
    kinds = [json.loads(line)["event"] for line in (d / "events.jsonl").read_text().splitlines()]
    assert "run_resume" in kinds and kinds.count("run_start") == 1

    # a directory left without a config (killed before it was written) starts cleanly
    seen = []

    def fake_run(cfg, out, *, resume, progress):
        seen.append((resume, out.exists()))
        raise RuntimeError("boom")

    monkeypatch.setattr("fedmuscle_secure.experiment.run.run_experiment", fake_run)
    junk = tmp_path / "cells" / "other"
    junk.mkdir()
    (junk / "events.jsonl").write_text("")
    marker = run_cell(cell.meta(), dump_config(cell.config), str(junk), 1)
    assert seen == [(False, False)]
    assert marker["status"] == "failed" and "RuntimeError: boom" in marker["error"]
