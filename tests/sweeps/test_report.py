"""Reading a sweep folder back: what the report, results.csv and the finish are built from."""

from sweeps.report import last_report_per_epoch


def test_an_epoch_run_again_after_a_resume_counts_once_with_its_later_report():
    # A stop between Tune logging epoch 2 and recording its checkpoint: the resumed trial runs
    # epoch 2 again from epoch 1's checkpoint, logs it again, then goes on.
    logged = [
        {"epoch": 1, "map": 0.30},
        {"epoch": 2, "map": 0.40},
        {"epoch": 2, "map": 0.41},
        {"epoch": 3, "map": 0.45, "done": True},
    ]
    kept = last_report_per_epoch(logged)
    assert [(r["epoch"], r["map"]) for r in kept] == [(1, 0.30), (2, 0.41), (3, 0.45)]
    # Reports without an epoch (none today) are all kept, in order.
    assert last_report_per_epoch([{"a": 1}, {"a": 2}]) == [{"a": 1}, {"a": 2}]
