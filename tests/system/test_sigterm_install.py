"""Where the SIGTERM handler is installed, and where it is put back: only in the main
thread (asked of ``signal.signal`` itself, which eventlet's patching does not fool),
and after a fork only where it was installed before and nobody set another handler.
Each case runs in a subprocess: its own signal state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from enso_tracker.testing import FakeEnso
from tests.conftest import API_KEY

pytestmark = pytest.mark.slow  # subprocesses, servers or frameworks: `make test`

ROOT = Path(__file__).resolve().parents[2]


def _run(source: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


def test_a_tracker_made_in_another_thread_installs_nothing_a_later_main_one_does() -> None:
    result = _run(
        """
        import signal, threading
        from enso_tracker import Tracker
        from enso_tracker._lifecycle import _on_sigterm

        made = []
        thread = threading.Thread(
            target=lambda: made.append(Tracker(api_key="k", base_url="http://127.0.0.1:9"))
        )
        thread.start()
        thread.join()
        assert made and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        main = Tracker(api_key="k", base_url="http://127.0.0.1:9")
        assert signal.getsignal(signal.SIGTERM) is _on_sigterm
        """
    )
    assert result.returncode == 0, result.stderr


def test_under_eventlet_the_main_greenlet_installs_the_handler() -> None:
    result = _run(
        """
        import eventlet
        eventlet.monkey_patch()
        import signal, threading
        from enso_tracker import Tracker
        from enso_tracker._lifecycle import _on_sigterm

        assert threading.current_thread() is not threading.main_thread()  # the trap
        tracker = Tracker(api_key="k", base_url="http://127.0.0.1:9")
        assert signal.getsignal(signal.SIGTERM) is _on_sigterm
        """
    )
    assert result.returncode == 0, result.stderr


def test_the_handler_is_put_back_after_a_fork_only_where_it_was_ours() -> None:
    result = _run(
        """
        import os, signal
        from enso_tracker import Tracker
        from enso_tracker._lifecycle import _on_sigterm, reinstall_sigterm_handler

        def mine(signum, frame):
            pass

        def in_child(check):
            pid = os.fork()
            if pid == 0:
                try:
                    check()
                except BaseException:
                    os._exit(1)
                os._exit(0)
            assert os.waitpid(pid, 0)[1] == 0, check.__name__

        def never_installed_anywhere():  # the application held SIGTERM in the parent
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            assert reinstall_sigterm_handler() is False
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

        signal.signal(signal.SIGTERM, mine)
        tracker = Tracker(api_key="k", base_url="http://127.0.0.1:9")
        assert signal.getsignal(signal.SIGTERM) is mine
        in_child(never_installed_anywhere)

        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        tracker = Tracker(api_key="k", base_url="http://127.0.0.1:9")
        assert signal.getsignal(signal.SIGTERM) is _on_sigterm

        def reset_to_default():  # what UvicornWorker.init_signals does
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            assert reinstall_sigterm_handler() is True
            assert signal.getsignal(signal.SIGTERM) is _on_sigterm

        def replaced_by_another():  # what gunicorn's own workers do
            signal.signal(signal.SIGTERM, mine)
            assert reinstall_sigterm_handler() is False
            assert signal.getsignal(signal.SIGTERM) is mine

        in_child(reset_to_default)
        in_child(replaced_by_another)
        """
    )
    assert result.returncode == 0, result.stderr


def test_a_sigterm_inside_the_tracker_with_no_thread_to_spare_still_stops_and_delivers(
    fake_enso: FakeEnso,
) -> None:
    # The handler hands the stop to a thread when the signal interrupted the tracker's own
    # code; when no thread can start, it must stop in place, never raise out of the handler.
    result = _run(
        f"""
        import signal, sys, threading
        from enso_tracker import Tracker
        from enso_tracker import _lifecycle

        tracker = Tracker(api_key="{API_KEY}", base_url="{fake_enso.url}", flush_interval=3600.0)
        for i in range(50):
            tracker.track("ent", "m", 1, event_id=f"e{{i}}")

        def refuse(self):
            raise RuntimeError("can't start new thread")

        threading.Thread.start = refuse
        # A frame of enso_tracker's own, as when SIGTERM lands inside track().
        scope = {{"__name__": "enso_tracker._frame", "lc": _lifecycle, "signal": signal,
                  "sys": sys}}
        exec("def inside():\\n    lc._on_sigterm(signal.SIGTERM, sys._getframe())", scope)
        scope["inside"]()
        print("the handler returned")
        """
    )
    assert result.returncode == -signal.SIGTERM, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert sorted(fake_enso.event_ids()) == sorted(f"e{i}" for i in range(50))
