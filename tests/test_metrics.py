import glob

from ldlm.logs import MetricsWriter, progress, read_metrics


def test_metrics_jsonl_and_tensorboard(tmp_path):
    with MetricsWriter(tmp_path) as w:
        w.write(1, {"loss": 2.5, "lr": 1e-3})
        w.write(2, {"loss": float("nan")}, split="validation")
    with MetricsWriter(tmp_path) as w:  # a resumed run appends
        w.write(3, {"loss": 1.0})
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0] == {"step": 1, "split": "train", "loss": 2.5, "lr": 1e-3}
    assert rows[1]["split"] == "validation" and rows[1]["loss"] == "nan"
    events = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    data = b"".join(open(e, "rb").read() for e in events)
    assert b"train/loss" in data and b"validation/loss" in data


def test_progress_counts():
    assert sum(progress(range(5), desc="x")) == 10
