"""Pinning threads to cores: core lists, a pinned thread, the pinned in-process selector.

Pinning happens in threads the test starts (or in a subprocess), never in pytest's own
threads: a pinned pytest would run every later test on one core.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from crest.service.settings import ServeSettings
from crest.worker.placement import (
    available_cores,
    format_cores,
    parse_cores,
    pin_current_thread,
    pinned,
    selector_threads,
)
from crest.worker.selector import InProcessSelector, SelectionRequest, run_selection

CORES = available_cores()
two_cores = pytest.mark.skipif(len(CORES) < 2, reason="needs two cores")


def in_thread(work: Callable[[], Any]) -> Any:
    """``work()`` on a new thread (which may pin itself and then ends); its result or error."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = work()
        except BaseException as err:
            out["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)
    if "error" in out:
        raise out["error"]
    return out["result"]


@pytest.mark.parametrize(
    ("text", "cores"),
    [("1", (1,)), ("0,2-3", (0, 2, 3)), (" 3 , 0-1 ", (0, 1, 3)), ("4-4", (4,))],
)
def test_core_lists_parse_and_format_back(text: str, cores: tuple[int, ...]) -> None:
    assert parse_cores(text) == cores
    assert parse_cores(format_cores(cores)) == cores
    assert format_cores((0, 2, 3)) == "0,2-3"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty core list"),
        ("1,,2", "bad core list '1,,2': an empty piece is not a core"),
        ("x", "bad core list 'x': 'x' is not a core"),
        ("-1", "'-1' is not a core"),
        ("1.5", "'1.5' is not a core"),
        ("3-1", "the range '3-1' is reversed"),
        ("0-2,2", "core(s) 2 named twice"),
    ],
)
def test_bad_core_lists_say_which_piece(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_cores(text)


def test_threads_follow_the_cores_unless_they_disagree() -> None:
    assert selector_threads(None, None) == 1
    assert selector_threads(3, None) == 3
    assert selector_threads(None, (1, 2)) == 2
    assert selector_threads(2, (1, 2)) == 2
    with pytest.raises(ValueError, match="threads=1 but 2 core"):
        selector_threads(1, (1, 2))


@two_cores
def test_a_pinned_thread_runs_on_its_cores_and_only_it() -> None:
    before, threads_before = os.sched_getaffinity(0), torch.get_num_threads()
    target = CORES[-1]

    def pin() -> tuple[tuple[int, ...], int, set[int]]:
        pin_current_thread([target])
        child = in_thread(available_cores)  # a thread it starts inherits the pinning
        return available_cores(), torch.get_num_threads(), set(child)

    cores, threads, child = in_thread(pin)
    assert cores == (target,) and child == {target}
    assert threads == 1
    assert os.sched_getaffinity(0) == before  # this thread (pytest's) never moved
    assert torch.get_num_threads() == threads_before


@two_cores
def test_pinned_restores_the_thread_afterwards() -> None:
    target = CORES[-1]

    def run() -> tuple[tuple[int, ...], int, tuple[int, ...], int]:
        torch.set_num_threads(2)
        with pinned([target]):
            inside = available_cores(), torch.get_num_threads()
        return (*inside, available_cores(), torch.get_num_threads())

    assert in_thread(run) == ((target,), 1, CORES, 2)


def test_pinning_to_cores_that_do_not_exist_fails_and_moves_nothing() -> None:
    missing = os.cpu_count() or 1

    def pin() -> tuple[int, ...]:
        with pytest.raises(ValueError, match=rf"core\(s\) {missing} do not exist: this machine"):
            pin_current_thread([0, missing])
        with pytest.raises(ValueError, match="no cores given"):
            pin_current_thread([])
        return available_cores()

    assert in_thread(pin) == CORES


def test_pin_process_moves_threads_started_before_it() -> None:
    # In a subprocess: it pins the whole process.
    code = (
        "import os, threading, time\n"
        "from crest.worker.placement import pin_process\n"
        "stop = threading.Event()\n"
        "early = threading.Thread(target=stop.wait); early.start()\n"
        f"pin_process([{CORES[-1]}])\n"
        "late = threading.Thread(target=stop.wait); late.start()\n"
        "print(sorted({tuple(sorted(os.sched_getaffinity(int(t)))) "
        "for t in os.listdir('/proc/self/task')}))\n"
        "stop.set()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str([(CORES[-1],)])


def request(seed: int) -> SelectionRequest:
    rng = np.random.default_rng(seed)
    groups = rng.permutation(np.repeat(np.arange(6), 20))
    embeddings = rng.standard_normal((len(groups), 8)).astype(np.float32)
    return SelectionRequest(embeddings, groups, np.full(6, 5), job_id="j")


@two_cores
def test_pinned_in_process_selector_answers_from_its_cores() -> None:
    target = CORES[-1]
    before = os.sched_getaffinity(0)
    selector = InProcessSelector(cores=[target])
    try:
        assert selector.worker_cores() == (target,)
        assert selector.threads == 1
        result = asyncio.run(selector.select(request(1), timeout_s=120))
    finally:
        selector.close()
    want = run_selection(request(1))
    assert np.array_equal(result.rows, want.rows) and np.array_equal(result.groups, want.groups)
    assert np.array_equal(result.weights, want.weights)
    assert os.sched_getaffinity(0) == before


def test_in_process_selector_refuses_bad_placements() -> None:
    with pytest.raises(ValueError, match="do not exist"):
        InProcessSelector(cores=[os.cpu_count() or 1])
    with pytest.raises(ValueError, match="threads=2 but 1 core"):
        InProcessSelector(threads=2, cores=[0])


@two_cores
def test_local_coordinator_pins_its_threads_and_serves() -> None:
    from crest.embedded import local_coordinator
    from tests.training import blobs, job_config

    target = CORES[-1]
    before = os.sched_getaffinity(0)
    with local_coordinator(cores=[target]) as local:

        async def loop_cores() -> tuple[int, ...]:
            return available_cores()

        assert local.submit(loop_cores()).result() == (target,)
        selector = local.manager.selector
        assert isinstance(selector, InProcessSelector)
        assert selector.worker_cores() == (target,)
        job = local.create_job(job_config(), blobs()[1].numpy())
        assert local.job_status(job).step == 0
    assert os.sched_getaffinity(0) == before


def test_settings_check_core_lists_and_threads() -> None:
    settings = ServeSettings(selector_cores="3,2", coordinator_cores="0")
    assert (settings.selector_cores, settings.coordinator_cores) == ("2-3", "0")
    with pytest.raises(ValidationError, match="'2-1' is reversed"):
        ServeSettings(selector_cores="2-1")
    with pytest.raises(ValidationError, match="threads=1 but 2 core"):
        ServeSettings(selector_cores="2-3", selector_threads=1)
    assert ServeSettings(selector_cores="2-3", selector_threads=2).selector_threads == 2
