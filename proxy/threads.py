"""The event loop's default executor in a serving process: threads that never hold up the exit.

asyncio's default executor is a `ThreadPoolExecutor`: `asyncio.run` (and `uvloop.run`) wait
for every one of its threads before they return, and the interpreter joins them again at exit.
The proxy's threads run blocking calls that carry their own, long timeouts: botocore fetching
credentials (an unreachable STS endpoint holds a thread for its 60 s read timeout, the
instance-metadata probe of the default chain about a second per attempt), DNS lookups, config
and secret file reads. One such call in progress when SIGTERM arrives kept the process alive
after its `stopped` line, past the shutdown bound the pod's grace period is sized for.

Once the proxy has stopped, no request waits for any of that work, so this executor's threads
are daemon threads and `shutdown()` never waits for them: the process exits after `stopped`.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_WorkItem = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]

DEFAULT_MAX_THREADS: Final = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default


class DaemonThreadPool(ThreadPoolExecutor):
    """A pool (up to `max_threads`, started on demand) of daemon threads whose `shutdown()`
    returns at once, whatever `wait` says: see the module docstring.

    A `ThreadPoolExecutor` by type only, because asyncio accepts nothing else as the default
    executor: `submit` and `shutdown` are its own, and none of the base class's machinery runs
    (its threads would be joined at exit).
    """

    def __init__(self, max_threads: int = DEFAULT_MAX_THREADS, name: str = "signing-proxy") -> None:
        super().__init__(max_workers=max_threads, thread_name_prefix=name)
        self._daemon_max = max_threads
        self._daemon_name = name
        self._daemon_work: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()
        self._daemon_threads: list[threading.Thread] = []
        self._daemon_idle = threading.Semaphore(0)
        self._daemon_lock = threading.Lock()
        self._daemon_closed = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        with self._daemon_lock:
            if self._daemon_closed:
                raise RuntimeError("cannot schedule new work after shutdown")
            self._daemon_work.put((future, fn, args, kwargs))
            idle = self._daemon_idle.acquire(blocking=False)
            if not idle and len(self._daemon_threads) < self._daemon_max:
                thread = threading.Thread(
                    target=self._run,
                    name=f"{self._daemon_name}-{len(self._daemon_threads)}",
                    daemon=True,
                )
                thread.start()
                self._daemon_threads.append(thread)
        return future

    def _run(self) -> None:
        while (item := self._daemon_work.get()) is not None:
            future, fn, args, kwargs = item
            del item  # the result and arguments must not outlive the call in this frame
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # handed to the awaiting coroutine, as the stdlib does
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, fn, args, kwargs
            self._daemon_idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work and let idle threads end. Never waits (`wait` is ignored): a thread
        still inside a blocking call is left to the process's exit."""
        with self._daemon_lock:
            self._daemon_closed = True
            for _ in self._daemon_threads:
                self._daemon_work.put(None)
