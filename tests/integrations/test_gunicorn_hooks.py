"""install() chains a config file's own hooks with ours, in a shape gunicorn
accepts (it checks each hook's arity)."""
import pytest

gunicorn_config = pytest.importorskip("gunicorn.config")

from apccache.integrations import gunicorn as g  # noqa: E402


def test_chained_hooks_have_the_arity_gunicorn_checks_and_call_both(monkeypatch):
    calls = []
    monkeypatch.setattr(g, "on_starting", lambda server: calls.append("ours start"))
    monkeypatch.setattr(g, "child_exit", lambda server, worker: calls.append("ours exit"))
    monkeypatch.setattr(g, "on_exit", lambda server: calls.append("ours on_exit"))
    monkeypatch.setattr(g, "_state", dict(g._state))
    ns = {
        "on_starting": lambda server: calls.append("theirs start"),
        "child_exit": lambda server, worker: calls.append("theirs exit"),
        "on_exit": lambda server: calls.append("theirs on_exit"),
    }
    g.install(ns, name="apctest-hooks", size="1M")
    cfg = gunicorn_config.Config()
    for hook in ("on_starting", "child_exit", "on_exit"):
        cfg.set(hook, ns[hook])  # raises TypeError on a wrong arity
    cfg.on_starting(None)
    cfg.child_exit(None, None)
    cfg.on_exit(None)
    assert calls == ["ours start", "theirs start", "ours exit", "theirs exit", "theirs on_exit",
                     "ours on_exit"]
