"""A `qa-serve` process for benchmarks: started as the service runs (`python -m app.cli`, settings from QA_*
variables) on a free loopback port, waited for through /readyz, read through /metrics, stopped with SIGTERM.

It sends no /answer requests (bench/http_latency.py does) and reads no settings itself: the caller passes
every QA_* variable.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx

from bench.workload import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A `qa-serve` subprocess on loopback; its log goes to a file (a full pipe would block it)."""

    def __init__(self, env: dict[str, str], log: IO[bytes]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """The /readyz body once it is 200; raises with the log's tail if the process dies or time is up."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"qa-serve exited with {self.proc.returncode}:\n{self.tail()}")
                try:
                    response = http.get("/readyz")
                    if response.status_code == 200:
                        return response.json()
                    if response.json().get("status") == "failed":
                        raise RuntimeError(f"qa-serve failed to load: {response.json()}\n{self.tail()}")
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"qa-serve not ready within {timeout:.0f} s:\n{self.tail()}")
                time.sleep(0.5)

    def thread_cpu_seconds(self) -> dict[int, float] | None:
        """CPU seconds (user + system) of each of the server's threads so far; None where /proc is absent."""
        tasks = Path(f"/proc/{self.proc.pid}/task")
        if not tasks.is_dir():
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        seconds: dict[int, float] = {}
        for task in tasks.iterdir():
            try:
                fields = (task / "stat").read_text().rpartition(")")[2].split()
            except OSError:  # the thread ended meanwhile
                continue
            seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        return seconds

    def tail(self, chars: int = 4000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-chars:]

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def scrape(url: str) -> dict[str, float] | None:
    """GET /metrics as {metric name: value summed over its labels}; None when the server has no /metrics."""
    try:
        response = httpx.get(f"{url}/metrics", timeout=30)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    values: dict[str, float] = {}
    for line in response.text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            number = float(value)
        except ValueError:
            continue
        key = name.split("{", 1)[0]
        values[key] = values.get(key, 0.0) + number
    return values


def metrics_delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any] | None:
    """What the server did between two scrapes: generation passes, questions per pass, generate calls and
    seconds, new tokens per output sequence, and its peak accelerator memory."""
    if before is None or after is None:
        return None

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    passes, sequences = delta("qa_batch_size_count"), delta("qa_generated_sequences_total")
    return {
        "passes": int(passes),
        "questions_per_pass": round(delta("qa_batch_size_sum") / passes, 2) if passes else None,
        "generate_calls": int(delta("qa_generate_calls_total")),
        "generate_seconds": round(delta("qa_generate_seconds_total"), 3),
        "tokens_per_sequence": round(delta("qa_generated_tokens_total") / sequences, 2)
        if sequences
        else None,
        "gpu_peak_bytes": after.get("qa_gpu_memory_peak_bytes"),
    }


def cpu_delta(before: dict[int, float] | None, after: dict[int, float] | None, wall: float) -> dict | None:
    """The server's CPU use between two readings: in all, per wall second, and its four busiest threads
    (a generation loop that is bound by kernel launches shows one thread near 1 CPU second per second; a
    second busy thread competing for the GIL shows up here)."""
    if before is None or after is None or wall <= 0:
        return None
    used = sorted((after[t] - before.get(t, 0.0) for t in after), reverse=True)
    return {
        "cpu_seconds": round(sum(used), 2),
        "cpu_per_wall_second": round(sum(used) / wall, 2),
        "busiest_threads_per_wall_second": [round(u / wall, 2) for u in used[:4]],
    }
