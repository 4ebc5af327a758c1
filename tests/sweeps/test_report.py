"""Reading a sweep folder back: what the report, results.csv and the finish are built from."""

import json

from sweeps.report import read_trials


def test_an_epoch_run_again_after_a_resume_counts_once_with_its_later_report(tmp_path):
    # A stop between Tune logging epoch 2 and recording its checkpoint: the resumed trial runs
    # epoch 2 again from epoch 1's checkpoint and logs it again, then goes on.
    trial = tmp_path / "trial_abc"
    trial.mkdir()
    logged = [
        {"epoch": 1, "map": 0.30},
        {"epoch": 2, "map": 0.40},
        {"epoch": 2, "map": 0.41},
        {"epoch": 3, "map": 0.45, "done": True},
    ]
    (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in logged))
    (trial / "params.json").write_text(json.dumps({"learning_rate": 1e-4}))
    (trial / "checkpoint_000000").mkdir()

    [read] = read_trials(tmp_path)
    assert [(r["epoch"], r["map"]) for r in read.reports] == [(1, 0.30), (2, 0.41), (3, 0.45)]
    assert read.done and read.checkpoints == 1 and read.trial_id == "abc"
    assert read.config == {"learning_rate": 1e-4}
