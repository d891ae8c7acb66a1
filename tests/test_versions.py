import pytest

from neumeta_pipeline.versions import prune, tasks_on_disk, versioned_datasets

STAMPS = ["2026-11-20T10.00.00.000Z", "2026-11-21T10.00.00.000Z", "2026-11-22T09.00.00.000Z", "2026-11-22T10.00.00.000Z"]


def _layout(data):
    """Four versions of a model and two of a report for task t, one version for task u."""
    for stamp in STAMPS:
        (data / "06_models/t/model.pt" / stamp).mkdir(parents=True)
        (data / "06_models/t/model.pt" / stamp / "model.pt").write_bytes(b"x" * 1000)
    for stamp in STAMPS[:2]:
        (data / "08_reporting/t/metrics.json" / stamp).mkdir(parents=True)
        (data / "08_reporting/t/metrics.json" / stamp / "metrics.json").write_text("{}")
    (data / "06_models/u/model.pt" / STAMPS[0]).mkdir(parents=True)
    (data / "06_models/u/model.pt" / STAMPS[0] / "model.pt").write_bytes(b"y")
    (data / "06_models/t/resume").mkdir()
    (data / "06_models/t/resume/train_inr-0123.pt").write_bytes(b"state")
    (data / "06_models/t/model.pt/notes").mkdir()  # not a version: never touched


def test_prune_keeps_exactly_the_newest_n_versions_of_each_dataset_and_is_a_dry_run_by_default(tmp_path):
    _layout(tmp_path)
    model = tmp_path / "06_models/t/model.pt"
    dry = prune(tmp_path, "t", keep=2)
    assert [v.name for v in dry.removed[model]] == STAMPS[1::-1] and dry.freed_bytes == 2000
    assert len(versioned_datasets(tmp_path, "t")[model]) == 4  # nothing removed yet
    report = prune(tmp_path, "t", keep=2, apply=True)
    assert [v.name for v in report.kept[model]] == STAMPS[:1:-1]
    assert sorted(p.name for p in model.iterdir()) == [*STAMPS[2:], "notes"]
    assert len(versioned_datasets(tmp_path, "t")[tmp_path / "08_reporting/t/metrics.json"]) == 2  # had only 2
    assert report.interrupted == [tmp_path / "06_models/t/resume/train_inr-0123.pt"]
    assert (tmp_path / "06_models/t/resume/train_inr-0123.pt").exists()
    assert len(versioned_datasets(tmp_path, "u")[tmp_path / "06_models/u/model.pt"]) == 1  # other tasks untouched
    assert tasks_on_disk(tmp_path) == ["t", "u"]


def test_prune_refuses_to_keep_nothing(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        prune(tmp_path, "t", keep=0)
