import fcntl
import logging

import numpy as np
import pytest
import torch

from neumeta_pipeline.errors import UserError
from neumeta_pipeline.neumeta.resume import ResumeFile, ResumeFileError, RunConflictError, content_hash, differences


def test_content_hash_follows_content_not_identity():
    a = {"state_dict": {"w": torch.arange(6.0).view(2, 3)}, "arch": {"name": "lenet"}, "n": [1, 2]}
    b = {"n": [1, 2], "arch": {"name": "lenet"}, "state_dict": {"w": torch.arange(6.0).view(2, 3).clone()}}
    assert content_hash(a) == content_hash(b)
    b["state_dict"]["w"][1, 2] += 1e-6
    assert content_hash(a) != content_hash(b)
    assert content_hash(torch.zeros(4)) != content_hash(torch.zeros(4, dtype=torch.float64))
    assert content_hash(torch.zeros(4)) != content_hash(torch.zeros(2, 2))
    assert content_hash(np.zeros(3, np.uint8)) != content_hash(np.ones(3, np.uint8))
    assert content_hash(torch.zeros(2, dtype=torch.bfloat16)) == content_hash(torch.zeros(2, dtype=torch.bfloat16))


def _interrupted(folder, config: dict) -> ResumeFile:
    with ResumeFile(folder, "train_inr", config) as resume:
        assert resume.load() is None
        resume.extra = {"warm_start": [3.0, 2.0]}
        resume.save({"epoch": 1, "weights": torch.ones(2)})
    return resume


def test_each_configuration_has_its_own_file_and_others_are_left_alone(tmp_path, caplog):
    first = _interrupted(tmp_path, {"seed": 0, "loop": {"lr": 0.1}})
    with caplog.at_level(logging.INFO), ResumeFile(tmp_path, "train_inr", {"seed": 1, "loop": {"lr": 0.1}}) as other:
        assert other.path != first.path
        assert other.load() is None  # another configuration's state is never taken
    assert f"train_inr starts afresh: the interrupted run in {first.path} has another configuration (seed: 0 -> 1)" in caplog.text
    assert first.path.exists()
    with ResumeFile(tmp_path, "train_inr", {"seed": 0, "loop": {"lr": 0.1}}) as same:
        state = same.load()
        assert state["epoch"] == 1 and same.extra == {"warm_start": [3.0, 2.0]}
        same.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_second_run_of_the_same_configuration_is_refused_while_the_first_trains(tmp_path):
    with ResumeFile(tmp_path, "pretrain", {"seed": 0}) as first:
        with pytest.raises(RunConflictError, match="same configuration is training pretrain right now"):
            with ResumeFile(tmp_path, "pretrain", {"seed": 0}):
                pass
        with ResumeFile(tmp_path, "pretrain", {"seed": 1}):  # another configuration may train alongside
            pass
        first.save({"epoch": 1})
    with ResumeFile(tmp_path, "pretrain", {"seed": 0}) as again:  # the lock went with the first run
        assert again.load()["epoch"] == 1


def test_a_lock_held_by_another_process_is_reported_with_its_holder(tmp_path):
    resume = _interrupted(tmp_path, {"seed": 0})
    with open(resume.path.with_suffix(".lock"), "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.truncate(0)
        held.write("4242")
        held.flush()
        with pytest.raises(RunConflictError, match="process 4242"):
            with ResumeFile(tmp_path, "train_inr", {"seed": 0}):
                pass


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_an_unreadable_or_foreign_resume_file_stops_with_its_path_and_the_fix(tmp_path, content):
    resume = _interrupted(tmp_path, {"seed": 0})
    if content is None:  # a readable state that belongs to another key
        torch.save({"key": "0123456789abcdef", "epoch": 3}, resume.path)
    else:
        resume.path.write_bytes(content)
    with ResumeFile(tmp_path, "train_inr", {"seed": 0}) as again:
        with pytest.raises(ResumeFileError, match=f"rm {resume.path}") as info:
            again.load()
    assert isinstance(info.value, UserError) and str(resume.path) in str(info.value)


def test_differences_name_every_changed_key():
    assert differences({"seed": 0, "loop": {"lr": 1, "epochs": 2}}, {"seed": 0, "loop": {"lr": 2, "epochs": 2}, "x": 1}) == [
        "loop.lr: 1 -> 2", "x: (unset) -> 1"
    ]
