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


def test_a_resumed_run_drops_the_lines_of_the_steps_it_trains_again(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        for step in (10, 20, 30):
            w.write(step, {"loss": step / 10})
        w.write(20, {"loss": 9.0}, split="validation")
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 40, "spl')  # a write torn by the kill
    with MetricsWriter(tmp_path, tensorboard=False, resumed_at=20) as w:  # checkpoint 20
        w.write(30, {"loss": 2.5})
    rows = read_metrics(tmp_path)
    assert [(r["step"], r["split"], r["loss"]) for r in rows] == [
        (10, "train", 1.0), (20, "train", 2.0), (20, "validation", 9.0), (30, "train", 2.5)]


def test_progress_shows_a_bar_on_process_0_only_and_passes_items_through(capsys,
                                                                         monkeypatch):
    assert list(progress(range(5), desc="stepping")) == [0, 1, 2, 3, 4]
    err = capsys.readouterr().err
    assert "stepping" in err and "5/5" in err
    monkeypatch.setattr("ldlm.logs.jax.process_index", lambda: 1)
    assert list(progress(range(5), desc="stepping")) == [0, 1, 2, 3, 4]
    assert capsys.readouterr().err == ""
