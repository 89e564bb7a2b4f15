"""Test doubles shared by the session tests (imported by name: pytest puts tests/ on sys.path)."""

from __future__ import annotations


def fake_cells(monkeypatch, seconds: float = 0.0) -> list[str]:
    """Session.run_cell replaced by an instant (or ``seconds``-long) ok cell whose training 'took' 1 s;
    returns the keys run, in order."""
    import time

    from peftbench.session.cell import blank_record
    from peftbench.session.runner import Session

    ran: list[str] = []

    def fake_cell(plan, spec, cache, env):
        time.sleep(seconds)
        ran.append(spec.key)
        result = blank_record(plan, spec, "ok")
        result.timings = {"train": 1.0}
        return result

    monkeypatch.setattr(Session, "run_cell", staticmethod(fake_cell))
    return ran
