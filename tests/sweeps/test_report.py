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


def test_results_csv_and_report_render_from_made_up_rows_without_ray(tmp_path):
    import csv
    import subprocess
    import sys
    from pathlib import Path

    # In a process of its own, so that "no Ray" is checked, not assumed.
    script = f"""
import sys
from pathlib import Path
import pandas as pd
import sweeps
from sweeps import choose, report
from sweeps.finish import Verdict
config = sweeps.default_config()
def frame(score):
    return pd.DataFrame([{{"epoch": 1, "selection": score, "objective": score,
                          **{{f"dim_{{d}}_cosine_map@100": score for d in config.dims}}}}])
rows = [choose.trial_row(config, "t1", dict(config.first_points[0]), frame(0.4)),
        choose.trial_row(config, "t2", {{p.key: 1e-4 for p in config.search}}, frame(0.5)),
        choose.trial_row(config, "t3", {{}}, None, RuntimeError("OOM"))]
verdict = Verdict(refit_epochs=[{{"dim_64_cosine_map@100": 0.6}}], refit_pairs=100)
report.write_csv(rows, verdict, Path(r"{tmp_path}") / "results.csv")
report.write_report(config, rows, choose.best(rows), None, {{}}, Path(r"{tmp_path}"))
assert "ray" not in sys.modules, "rendering imported ray"
"""
    command, repo = [sys.executable, "-c", script], Path(__file__).resolve().parents[2]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    table = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["trial"] for r in table] == ["t1", "t2", "t3", "refit"]
    assert table[2]["status"] == "failed" and table[2]["error"] == "OOM"
    assert table[3]["dim_64_map@100"] == "0.6"
    text = (tmp_path / "report.md").read_text()
    assert "3 trials: " in text and "**Chosen:** trial `t2`" in text
    assert "- `t3`: OOM" in text and "t1 (seed recipe)" in text
