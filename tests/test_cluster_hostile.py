"""A cluster that cannot form: malformed addresses, a worker that never starts, a port already taken. Each ends
in one line, within the timeout it was given, before TensorFlow's strategy is made; Ctrl-C and SIGTERM end
the wait for the other workers.

The first tests call the checks in-process (no TensorFlow). The others start the real ``amazonmine train`` with a
``TF_CONFIG`` on loopback; their bounds are generous (a loaded machine takes a minute to import TensorFlow),
and what they time is measured from the worker's own "waiting for" line, so they do not race its start-up.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amazonmine.neural.cluster import ClusterError, _reserve_port, read_membership, wait_for_peers
from amazonmine.testing import free_loopback_ports

# How long a worker may take to start (import TensorFlow) on a machine running other jobs: only to fail instead
# of hanging, never a measured bound.
START_UP = 300.0
# How long a worker may take to end after its timeout ran out or it was signalled: the join's timeout, one
# connect try and the exit, with room for a loaded machine.
END_BOUND = 60.0
pytestmark = pytest.mark.xdist_group("cluster")


def membership(addresses: list[str], index: int):
    return read_membership("auto", {"TF_CONFIG": json.dumps({"cluster": {"worker": addresses},
                                                              "task": {"type": "worker", "index": index}})})


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1:http", ":8888", "a host:8888",
                                     "h" * 5000 + ":1x"])
def test_a_malformed_address_is_one_line_naming_it(address):
    with pytest.raises(ClusterError, match=r"TF_CONFIG: cluster.worker\[1\] .* is not a host:port address") as err:
        membership(["127.0.0.1:2222", address], 0)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_ipv6_and_host_names_are_addresses():
    found = membership(["[::1]:2222", "node-7.cluster:2223"], 1)
    assert found.addresses == ["[::1]:2222", "node-7.cluster:2223"]


def test_waiting_for_a_worker_that_never_starts_ends_at_the_timeout_naming_it():
    ports = free_loopback_ports(2)  # nobody listens on the second
    said = []
    started = time.monotonic()
    with pytest.raises(ClusterError) as err:
        wait_for_peers(membership([f"127.0.0.1:{p}" for p in ports], 0), timeout=1.0, say=said.append)
    took = time.monotonic() - started
    assert 1.0 <= took < END_BOUND
    assert str(err.value).startswith(f"cannot join the cluster as the chief (127.0.0.1:{ports[0]}): worker 1 "
                                     f"(127.0.0.1:{ports[1]}) did not answer within 1 s (Connection refused)")
    assert said == [f"the chief (127.0.0.1:{ports[0]}): waiting for worker 1 (127.0.0.1:{ports[1]}) to start "
                    f"(up to 1 s, --cluster-timeout)"]


def test_waiting_ends_as_soon_as_every_other_worker_answers():
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        said = []
        wait_for_peers(membership(["127.0.0.1:1", f"127.0.0.1:{port}"], 0), timeout=0, say=said.append)
        assert said == []  # up at the first try: nothing to say


def test_a_port_in_use_is_refused_naming_it():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ClusterError, match=f"worker 1 \\(127.0.0.1:{port}\\): port {port} is in use"):
            _reserve_port(membership(["127.0.0.1:1", f"127.0.0.1:{port}"], 1))
    held = _reserve_port(membership(["127.0.0.1:1", f"127.0.0.1:{port}"], 1))  # free again: held by the worker
    held.close()


# --- the train command ---------------------------------------------------------------------------------------

def start_train(tmp_path: Path, addresses: list[str], index: int,
                timeout: float) -> tuple[subprocess.Popen, Path, Path]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the command's own default
    env.update({"CUDA_VISIBLE_DEVICES": "", "TF_CONFIG": json.dumps({
        "cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})})
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    proc = subprocess.Popen([sys.executable, "-m", "amazonmine.cli", "train", "--fold", "0",
                             "--cluster-timeout", f"{timeout:g}", "--set", f"run.dir={tmp_path / 'run'}",
                             "--set", f"data.root={tmp_path / 'data'}"],
                            env=env, stdout=open(out, "w"), stderr=open(err, "w"), cwd=tmp_path)
    return proc, out, err


def wait_for_line(proc: subprocess.Popen, path: Path, text: str, bound: float = START_UP) -> float:
    """When ``text`` appeared in the file (the worker's stdout or stderr), at most ``bound`` seconds from now;
    fails if the worker ends without saying it, or says nothing in time."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if text in path.read_text():
            return time.monotonic()
        if proc.poll() is not None and text not in path.read_text():
            pytest.fail(f"the worker ended (exit {proc.returncode}) without saying {text!r}:\n{path.read_text()}")
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    pytest.fail(f"no {text!r} from the worker within {bound:.0f} s")


def ended(proc: subprocess.Popen, since: float, bound: float = END_BOUND) -> float:
    try:
        proc.wait(timeout=max(1.0, since + bound - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the worker did not end within {bound:.0f} s")
    return time.monotonic() - since


def error_lines(err: Path) -> list[str]:
    return [line for line in err.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_train_whose_other_worker_never_starts_says_so_in_one_line_at_its_timeout(tmp_path):
    ports = free_loopback_ports(2)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    proc, out, err = start_train(tmp_path, addresses, 0, timeout=3)
    waiting = wait_for_line(proc, out, f"waiting for worker 1 ({addresses[1]}) to start (up to 3 s")
    said = wait_for_line(proc, err, "error: ", bound=END_BOUND) - waiting
    ended(proc, time.monotonic(), bound=START_UP)  # TensorFlow's teardown: seconds, more on a busy machine
    assert proc.returncode == 1, err.read_text()[-3000:]
    assert error_lines(err) == [f"error: cannot join the cluster as the chief ({addresses[0]}): worker 1 "
                                f"({addresses[1]}) did not answer within 3 s (Connection refused); start every "
                                f"worker with the same command and its own TF_CONFIG task, or raise "
                                f"--cluster-timeout"]
    print(f"said why {said:.1f} s after it said it was waiting")


@pytest.mark.slow
def test_sigterm_ends_a_worker_waiting_for_the_others(tmp_path):
    ports = free_loopback_ports(3)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    proc, out, err = start_train(tmp_path, addresses, 1, timeout=0)  # 0: it would wait for ever
    wait_for_line(proc, out, "with no time limit, --cluster-timeout")
    assert f"worker 1 ({addresses[1]}): waiting for the chief ({addresses[0]}), worker 2" in out.read_text()
    proc.send_signal(signal.SIGTERM)
    wait_for_line(proc, err, "interrupted", bound=END_BOUND)
    ended(proc, time.monotonic(), bound=START_UP)
    assert proc.returncode == 130 and error_lines(err) == ["interrupted"], err.read_text()[-3000:]


@pytest.mark.slow
def test_a_cluster_tensorflow_cannot_form_is_ended_in_one_line_at_the_timeout(tmp_path):
    # The other worker's port answers (this test holds it open) but nothing there speaks TensorFlow's protocol:
    # the wait for the peers ends at once, and the strategy's creation, which would then wait inside TensorFlow
    # for up to an hour deaf to signals, is ended by the watchdog once the timeout has run out.
    with socket.create_server(("127.0.0.1", 0)) as impostor:
        addresses = [f"127.0.0.1:{free_loopback_ports(1)[0]}", f"127.0.0.1:{impostor.getsockname()[1]}"]
        proc, out, err = start_train(tmp_path, addresses, 0, timeout=3)
        ended(proc, time.monotonic(), bound=START_UP)
    assert proc.returncode == -signal.SIGKILL, err.read_text()[-3000:]  # the only way out of TensorFlow's wait
    assert "waiting for" not in out.read_text()
    assert error_lines(err) == [f"error: cannot join the cluster as the chief ({addresses[0]}): the workers answered "
                                f"but TensorFlow did not form the cluster within 3 s (a worker stopped since, or "
                                f"another program answers on a worker's port)"]


def handles(pid: int, *signals: int) -> bool:
    """Whether process ``pid`` has a handler of its own for every one of ``signals`` (Linux: /proc SigCgt)."""
    caught = next(int(line.split()[1], 16) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if line.startswith("SigCgt:"))
    return all(caught >> (sig - 1) & 1 for sig in signals)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads a process's signal handlers in /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_watchdog_of_the_strategys_creation_ends_it_on_sigterm_or_ctrl_c(sig):
    # What a Ctrl-C or a SIGTERM sent to the process group does while TensorFlow holds the worker: the watchdog
    # says "interrupted" and kills the worker. A sleeping process stands in for the held worker; the signal is
    # sent once the watchdog's handlers are in place (read from /proc), so nothing races.
    from amazonmine.neural.cluster import _WATCHDOG

    held = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(held.pid), "0", "never said"],
                                stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + START_UP
        while not handles(watchdog.pid, signal.SIGINT, signal.SIGTERM):
            assert watchdog.poll() is None and time.monotonic() < deadline, "the watchdog did not start"
            time.sleep(0.02)
        watchdog.send_signal(sig)
        assert watchdog.wait(timeout=END_BOUND) == 0 and watchdog.stderr.read() == b"interrupted\n"
        assert held.wait(timeout=END_BOUND) == -signal.SIGKILL
    finally:
        for proc in (held, watchdog):
            proc.kill()
            proc.wait()


def test_the_watchdog_goes_quietly_once_the_strategy_is_made():
    from amazonmine.neural.cluster import _WATCHDOG

    held = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(held.pid), "600", "never said"],
                                stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        watchdog.stdin.close()  # what join does once the strategy is made (or the worker died)
        assert watchdog.wait(timeout=START_UP) == 0 and watchdog.stderr.read() == b""
        assert held.poll() is None  # left alone
    finally:
        for proc in (held, watchdog):
            proc.kill()
            proc.wait()


def test_train_given_a_port_in_use_names_it_before_starting_tensorflow(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        other = free_loopback_ports(1)[0]
        proc, out, err = start_train(tmp_path, [f"127.0.0.1:{other}", f"127.0.0.1:{port}"], 1, timeout=30)
        ended(proc, time.monotonic(), bound=START_UP)  # it refuses before TensorFlow: only Python's start-up
    assert proc.returncode == 1
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot join the cluster as worker 1 (127.0.0.1:{port}): "
                                                   f"port {port} is in use on this machine"), lines
