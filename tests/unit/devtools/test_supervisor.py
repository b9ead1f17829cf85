"""`make up` restarts a service that exits, with a growing delay, as Kubernetes would."""

from __future__ import annotations

from pathlib import Path

from devtools.stack import Stack, Supervisor


def _exited(stack: Stack, name: str) -> None:
    proc = stack.procs[name]
    proc.popen.wait(timeout=30)


def test_an_exiting_service_is_restarted_after_1_then_2_then_4_seconds(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    # `python -m kashf_missing_service` exits at once with status 1: a service that keeps crashing.
    stack = Stack("postgresql://unused", "nats://unused", services=("kashf_missing_service",), log_dir=tmp_path)
    supervisor = Supervisor(stack)
    t = 1000.0
    supervisor.check(t)  # not running yet: started at once
    assert "kashf_missing_service" in stack.procs
    delays = []
    for _ in range(3):
        _exited(stack, "kashf_missing_service")
        supervisor.check(t)
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert line.startswith("kashf_missing_service exited with 1; restarting in ")
        delays.append(float(line.rsplit(" ", 2)[-2]))
        supervisor.check(t + delays[-1] - 0.1)
        assert "kashf_missing_service" not in stack.procs  # waits out the delay
        t += delays[-1]
        supervisor.check(t)
        assert "kashf_missing_service" in stack.procs
    assert delays == [1.0, 2.0, 4.0]
    _exited(stack, "kashf_missing_service")
    assert (tmp_path / "kashf_missing_service.log").read_text().count("No module named") == 4


def test_a_service_that_stayed_up_starts_again_from_the_shortest_delay(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "kashf_sleeper.py").write_text("import time\ntime.sleep(60)\n", encoding="utf-8")
    stack = Stack("postgresql://unused", "nats://unused", services=("kashf_sleeper",), log_dir=tmp_path,
                  env={"PYTHONPATH": str(tmp_path)})
    supervisor = Supervisor(stack, healthy_after_s=60.0)
    supervisor._delay["kashf_sleeper"] = 16.0  # as after several crashes in a row
    supervisor.check(0.0)
    supervisor.check(61.0)  # still running a minute later: healthy
    stack.procs["kashf_sleeper"].popen.kill()
    stack.procs["kashf_sleeper"].popen.wait(timeout=30)
    supervisor.check(62.0)
    assert capsys.readouterr().out.strip().endswith("kashf_sleeper exited with -9; restarting in 1 s")
    supervisor.check(63.0)
    stack.stop_all()
