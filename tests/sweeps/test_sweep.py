"""Real sweeps on a real local Ray: Optuna + ASHA, W&B offline files, a failing trial,
a killed-and-resumed sweep, and the exported best model."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import sweeps
from sweeps.finish import choose_mix
from tests.sweeps import wandb_records
from tests.sweeps.smoke import SECRET, SIMULATED_SWEEP_ID, sweep_env

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


# A progress bar's line, as tqdm draws it ("  40%|████      | 2/5 [00:01<00:01, 1.9it/s]").
TQDM_LINE = re.compile(r"\d+%\|.*\|\s*\d+/\d+")


def test_the_sweep_prints_no_progress_bars(smoke_sweep):
    """Tune's status table and one line per trial per epoch are the progress view: bars relayed
    line by line from the trials would flood it."""
    _, _, output = smoke_sweep
    bars = [line for line in output.splitlines() if TQDM_LINE.search(line)]
    assert not bars, f"{len(bars)} progress-bar lines, e.g. {bars[:3]}"
    epochs = [
        line for line in output.splitlines() if "epoch 1/" in line and "MAP@100 by dim" in line
    ]
    assert len(epochs) >= 3, output[-3000:]


def test_smoke_sweep_exports_the_best_model_and_a_report(smoke_sweep):
    code, out, output = smoke_sweep
    assert code == 0, output[-3000:]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["trial"] for r in rows].count("refit") == 1 and len(rows) == 5
    for row in rows:
        for dim in (384, 128, 64):
            assert f"dim_{dim}_map@100" in row
    report = (out / "report.md").read_text()
    sections = ("## Held-out test split", "## Guard (out of domain)", "## Trials", "Chosen factor")
    for section in (*sections, "## Serving backends", "- **After the trials:** refit"):
        assert section in report
    assert (out / "map_vs_dim.png").stat().st_size > 1000
    # The exported model is a plain sentence-transformers folder with its training state removed.
    from sentence_transformers import SentenceTransformer

    best = out / "best"
    assert not (best / "optimizer.pt").exists()
    model = SentenceTransformer(str(best), device="cpu")
    embeddings = model.encode(["a package manager", "a text editor"])
    assert embeddings.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    metrics = json.loads((best / "metrics.json").read_text())
    assert metrics["final"]["dim_64_cosine_map@100"] > 0
    # The refit is kept or not on validation: the test split picks nothing, and scores only
    # the kept one of the two.
    validation = {k: v[metrics["objective"]] for k, v in metrics["validation"].items()}
    kept = "refit" if validation["refit"] > validation["best trial"] else "best trial"
    assert metrics["exported"].startswith(kept), (metrics["exported"], validation)
    assert set(metrics["test"]) == {"base", "seed recipe", kept, metrics["exported"]}
    # The verifying guard source chooses nothing, as the test split: the factor follows from
    # the choosing sources' figures and validation alone.
    roles = metrics["guard_roles"]
    choosing = {name for name, role in roles.items() if role == "choose"}
    assert choosing == {"wordnet", "vim-faq"} and roles["unix-faqs"] == "verify"
    for m in metrics["mixes"]:
        assert set(m["guard"]) == choosing
        base = metrics["guard"]
        assert m["within"] == all(
            base[name]["base"][f"dim_{d}_cosine_map@100"]
            - m["guard"][name][f"dim_{d}_cosine_map@100"]
            <= 0.01
            for name in choosing
            for d in (384, 128, 64)
        )
    assert choose_mix(metrics["mixes"], 0.01, metrics["objective"])[0] == metrics["mix_factor"]
    assert metrics["exported"] in metrics["guard"]["unix-faqs"]
    assert isinstance(metrics["guard_held"], bool)
    assert {"torch", "onnx", "onnx-int8"} <= set(metrics["backends"])
    # A smoke sweep's validation has ~60 queries: too few for the gate to decide.
    assert "under the 200 needed" in metrics["backends"]["undecided"]
    assert not metrics["backends"]["onnx-int8"]["gated"]
    assert (best / "onnx" / "model.onnx").is_file()
    # What it read: the fingerprint in metrics.json and the report, and the pinned pairs.
    seen = metrics["data"]
    assert seen["source"] == "debian" and seen["origin"]["releases"]
    assert "## Data" in report and seen["splits"]["test"]["sha256"] in report
    pinned = out / "data" / "pairs.jsonl"
    assert sum(1 for _ in pinned.open()) == seen["pairs"]
    assert json.loads((best / "matryoshka.json").read_text())["dims"] == [384, 128, 64]
    # Hard negatives: mined before the trials (or read, where this machine's cache has them),
    # for the trials' pairs and the refit's; every trial and the refit read the cache.
    mined = json.loads((out / "negatives.json").read_text())
    assert [m["pairs"] for m in mined] == [48, 96]
    assert all(m["kept"] > 0.9 * m["pairs"] and m["num_negatives"] == 1 for m in mined)
    reports = [r for t in sweeps.trial_results(out) for r in t.reports]
    assert reports and all(r["negatives_from_cache"] == 1.0 for r in reports)
    assert metrics["refit_negatives"]["from_cache"] is True
    assert "## Hard negatives" in report and "read from the cache" in report
    assert "held-out test split" in (best / "README.md").read_text()
    # Output precisions: calibrated on the train split's passages, scored per backend and dim
    # on validation (too few queries here: nothing quantized is allowed), plotted, recommended.
    precisions = metrics["precisions"]
    assert precisions["calibration_passages"] > 10
    assert (best / "quantization" / "calibration.npy").is_file()
    assert "undecided" in precisions and set(precisions["backends"]) == set(metrics["backends"]) - {
        "task",
        "tolerance",
        "metric",
        "undecided",
    }
    for entry in precisions["backends"].values():
        for row in entry["dims"].values():
            assert set(row) == {"float32", "int8", "uint8", "binary", "ubinary", "binary-rescored"}
            assert [p for p, m in row.items() if m["allowed"]] == ["float32"]
        assert entry["recommended"]["precision"] == "float32"
    assert "## Smaller vectors" in report and "**Recommended:**" in report
    assert (out / "quality_vs_bytes.png").stat().st_size > 1000
    assert "## Smaller vectors" in (best / "README.md").read_text()


def test_epochs_are_the_budget_so_rungs_compare_the_same_schedule(smoke_sweep):
    """Every sampled trial's learning-rate schedule spans the same epochs (the budget), so
    ASHA's rungs compare trials at the same phase; the seed recipe runs its own 4 epochs to the
    end; what ASHA stopped reaches the sampler as PRUNED, not as a finished run."""
    _, out, _ = smoke_sweep
    trials = sweeps.trial_results(out)
    seed = [t for t in trials if t.config["learning_rate"] == 2e-5]
    assert len(seed) == 1 and [r["epoch"] for r in seed[0].reports] == [1, 2, 3, 4]
    for trial in trials:
        assert {r["schedule_epochs"] for r in trial.reports} == {4}, trial.trial_id
    rows = {r["trial"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows[seed[0].trial_id]["status"] == "completed 4/4 epochs"
    history = sweeps.search_history(out)
    stopped = [t.trial_id for t in trials if not t.reports[-1].get("final_epoch")]
    pruned = [t for t in history.trials if t["state"] == "PRUNED"]
    failed = [r for r in rows.values() if r["status"] == "failed"]
    assert len(pruned) == len(stopped) - len(failed)  # the failed trial is told FAIL
    scored = [r for k, r in rows.items() if k != "refit" and r["objective"]]
    chosen = max(scored, key=lambda r: float(r["objective"]))
    assert f"**{chosen['chosen_epochs']} epochs**" in (out / "report.md").read_text()


def test_the_report_names_the_sampler_that_ran(smoke_sweep):
    _, out, _ = smoke_sweep
    ran = sweeps.search_history(out).sampler  # from Optuna's own saved study
    names = {"QMCSampler": "qmc", "GPSampler": "gp", "TPESampler": "tpe", "RandomSampler": "random"}
    assert f"**Sampler: {names[ran]}**" in (out / "report.md").read_text()


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(smoke_sweep):
    _, out, _ = smoke_sweep
    rows = [r for r in csv.DictReader((out / "results.csv").open()) if r["trial"] != "refit"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and "injected fault" in failed[0]["error"]
    assert sum(r["status"] != "failed" for r in rows) == 3
    assert "## Failed trials" in (out / "report.md").read_text()


def test_every_trial_and_the_refit_log_to_wandb_offline_in_the_sweep(smoke_sweep):
    _, out, _ = smoke_sweep
    run_files = sorted((out / "wandb").rglob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 5, "one W&B run per trial, and one for the refit"
    kinds = []
    for run_file in run_files:
        info = wandb_records.run_info(run_file)
        assert info.run_group == "smoke" and info.sweep_id == SIMULATED_SWEEP_ID
        kinds.append((info.job_type, tuple(info.tags)))
        history = wandb_records.history(run_file)
        assert history, f"{run_file} has no history"
        keys = set().union(*history)
        for dim in (384, 128, 64):
            assert {f"dim_{dim}_cosine_map@100", f"dim_{dim}_cosine_ndcg@10"} <= keys
        assert "objective" in keys and "epoch" in keys
        if info.job_type == "trial":
            assert {"train_pairs_seen", "train_seconds"} <= keys
            summary = wandb_records.summary(run_file)
            assert {f"dim_{d}_cosine_map@100" for d in (384, 128, 64)} <= set(summary)
    assert kinds.count(("refit", ("refit",))) == 1
    assert kinds.count(("trial", ("trial", "seed-recipe"))) == 1
    manifest = json.loads((out / "wandb" / "publish.json").read_text())
    assert sorted(manifest["tags"].values()) == ["best", "refit"]
    spec = yaml.safe_load((out / "wandb" / "sweep.yaml").read_text())
    assert spec["name"] == "smoke" and spec["metric"] == {"name": "objective", "goal": "maximize"}


def test_no_api_key_lands_in_the_run_folder(smoke_sweep):
    _, out, output = smoke_sweep
    assert SECRET not in output
    leaks = [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks


@pytest.mark.parametrize(
    "signum", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["SIGKILL", "SIGINT", "SIGTERM"]
)
def test_a_stopped_sweep_resumes_without_rerunning_finished_trials(tmp_path, signum):
    """A crash (SIGKILL), Ctrl-C (SIGINT) or a service manager's stop (SIGTERM) mid-sweep:
    the last two stop it in 5 s with no Ray process left and Tune's state saved; after a crash
    or Ctrl-C, --resume finishes the sweep without running a finished trial again. (SIGTERM
    and SIGINT take the one handler, tune_run.graceful_stop, so what they leave is resumed
    alike: resuming after SIGINT alone keeps the suite's time, 35-40 s less.)"""
    import psutil

    storage = tmp_path / "runs"
    command = [sys.executable, "sweeps/run.py", "--smoke-test", "--name", "stopped"]
    command += ["--storage_path", str(storage)]
    # The steps after the search (refit, guard, ONNX) are the smoke sweep test's: off here, so
    # the three signals fit the suite's time.
    command += ["--refit", "null", "--guard", "null", "--onnx", "false", "--num-samples", "3"]
    # No early stopping: a trial that ASHA stops at its first rung can end the search within
    # milliseconds of its first checkpoint, so the signal would land after the search.
    command += ["--grace_period", "4"]
    log = tmp_path / "first.log"
    # A session of its own, so that the signals reach only the sweep. (SIGINT may arrive
    # ignored, under `nohup make test &`: the sweep sets its own handler for it.)
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=sweep_env(),
        start_new_session=True,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    out = storage / "stopped"
    deadline = time.monotonic() + 300
    finished: dict[str, list] = {}
    interrupted: list[str] = []
    try:
        # Stop it once one trial has finished and another holds a checkpoint mid-run.
        while time.monotonic() < deadline:
            time.sleep(0.5)
            trials = sweeps.trial_results(out) if out.exists() else []
            done = {t.trial_id: t.reports for t in trials if t.done}
            checkpointed = [t.trial_id for t in trials if not t.done and t.checkpoints]
            if done and checkpointed:
                finished, interrupted = done, checkpointed
                break
            assert proc.poll() is None, log.read_text()[-3000:]
        else:
            pytest.fail("no trial finished in time:\n" + log.read_text()[-3000:])
        processes = psutil.Process(proc.pid).children(recursive=True)
        sent = time.monotonic()
        os.kill(proc.pid, signum)
        proc.wait(timeout=120)
        took = time.monotonic() - sent
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "results.csv").exists(), "the first run must not have finished"
    if signum != signal.SIGKILL:
        assert proc.returncode == 128 + signum, log.read_text()[-3000:]
        assert took <= 5.0, f"{signal.Signals(signum).name} took {took:.1f} s to stop the sweep"
        time.sleep(0.5)  # reaped processes leave the table
        left = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, [" ".join(p.cmdline())[:100] for p in left]
        assert "--resume" in log.read_text()  # it says how to continue
        assert list(out.glob("experiment_state-*.json")), "Tune's state was not saved"
    if signum == signal.SIGTERM:
        return

    resumed = subprocess.run(
        command + ["--resume"],
        cwd=REPO,
        env=sweep_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = list(csv.DictReader((out / "results.csv").open()))
    trial_rows = [r for r in rows if r["trial"] != "refit"]
    assert len(trial_rows) == 3, rows
    failed = {r["trial"]: r["error"] for r in trial_rows if r["status"] == "failed"}
    assert not failed, (failed, resumed.stdout[-3000:])
    after = {t.trial_id: t for t in sweeps.trial_results(out)}
    for name, before in finished.items():
        assert after[name].reports == before, f"{name} was run again"
    for name in interrupted:
        # Continued from its last recorded checkpoint, not from the start: at most the one epoch
        # in flight at the stop (logged, its checkpoint not yet recorded) runs again.
        epochs = after[name].epochs_logged
        assert len(epochs) - len(set(epochs)) <= 1, f"{name} restarted: epochs {epochs}"
        assert [r["epoch"] for r in after[name].reports] == sorted(set(epochs)), epochs
    assert (out / "best" / "modules.json").exists()
