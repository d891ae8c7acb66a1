import sys

import pytest

from neumeta_pipeline.errors import UserError, install_excepthook


@pytest.fixture
def hook(monkeypatch):
    calls = []
    monkeypatch.setattr(sys, "excepthook", lambda *args: calls.append(args))
    monkeypatch.delenv("NEUMETA_TRACEBACK", raising=False)
    install_excepthook()
    install_excepthook()  # twice wraps once
    return sys.excepthook, calls


def _raised(exc):
    try:
        raise exc
    except BaseException as caught:
        return type(caught), caught, caught.__traceback__


def test_a_user_error_prints_its_message_alone(hook, capsys):
    excepthook, previous = hook
    excepthook(*_raised(UserError("data.root: no such folder; set it to ...")))
    assert "Error: data.root: no such folder; set it to ..." in capsys.readouterr().err and previous == []


def test_a_user_error_wrapped_by_another_error_is_found(hook, capsys):
    excepthook, previous = hook
    try:
        try:
            raise UserError("the real reason")
        except UserError as inner:
            raise RuntimeError("a dataset failed") from inner
    except RuntimeError as outer:
        excepthook(type(outer), outer, outer.__traceback__)
    assert "Error: the real reason" in capsys.readouterr().err and previous == []


def test_a_crash_and_a_user_error_with_tracebacks_asked_for_keep_the_traceback(hook, monkeypatch):
    excepthook, previous = hook
    excepthook(*_raised(KeyError("bug")))
    monkeypatch.setenv("NEUMETA_TRACEBACK", "1")
    excepthook(*_raised(UserError("reason")))
    assert [type(call[1]) for call in previous] == [KeyError, UserError]
