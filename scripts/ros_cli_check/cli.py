"""Run the ros2 CLI lines of docs/ros.md against the colcon workspace; print a transcript."""

import os
import signal
import subprocess
import sys
import time

ENV = dict(os.environ)
OUT = []


def wait_node(name, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (
            name
            in subprocess.run(
                "ros2 node list --no-daemon", shell=True, capture_output=True, text=True, env=ENV
            ).stdout.split()
        ):
            return True
        time.sleep(0.5)
    return False


def sh(cmd, timeout=60):
    t = time.monotonic()
    try:
        p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout, env=ENV)
        text, rc = (p.stdout + p.stderr).strip(), p.returncode
    except subprocess.TimeoutExpired as exc:
        text, rc = f"(timed out after {timeout} s) {exc.stdout or ''}", "timeout"
    OUT.append(f"$ {cmd}\n{text}\n[rc {rc}, {time.monotonic() - t:.1f} s]")
    print(OUT[-1], flush=True)
    return text


def spawn_like_a_terminal(cmd, stdout, shell=False):
    """A process in its own session with SIGINT at its default, as a command typed in a terminal
    (a background job of a shell would ignore SIGINT, and then Ctrl-C could not end it cleanly)."""
    return subprocess.Popen(cmd, shell=shell, stdout=stdout, stderr=subprocess.STDOUT, env=ENV, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


class Launch:
    def __init__(self, cmd, log):
        self.log = open(log, "w")
        self.cmd = cmd
        self.p = spawn_like_a_terminal("exec " + cmd, self.log, shell=True)
        self.path = log

    def wait_for(self, text, timeout=90):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in open(self.path).read():
                return True
            time.sleep(0.2)
        return False

    def interrupt(self, times=1, gap=0.3, timeout=30):
        for _ in range(times):
            if self.p.poll() is None:
                os.killpg(self.p.pid, signal.SIGINT)
            time.sleep(gap)
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            rc = "killed"
        text = open(self.path).read()
        OUT.append(
            f"$ {self.cmd}   # then {times} x SIGINT {gap} s apart\n"
            + "\n".join(text.splitlines()[-12:])
            + f"\n[exit code {rc}; Traceback in log: {'Traceback' in text}]"
        )
        print(OUT[-1], flush=True)
        return rc, text


if __name__ == "__main__":
    step = sys.argv[1]
    globals()[step](*sys.argv[2:])
