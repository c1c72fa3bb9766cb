"""Run blocking calls from Tornado and asyncio code on named executors.

>>> import asyncio, time
>>> from offload import offload
>>> @offload
... def blocking(x):
...     time.sleep(0.01)
...     return x + 1
>>> async def main():
...     return await blocking(41)
>>> asyncio.run(main())
42
"""

from __future__ import annotations

#: The release, the single source of the package's version (the build reads it here).
__version__ = "0.1.0"

from ._affinity import AffineThread as AffineThread
from ._affinity import DeadlockError as DeadlockError
from ._api import get_executor as get_executor
from ._api import lane as lane
from ._api import offload as offload
from ._api import register as register
from ._api import shutdown as shutdown
from ._api import stats as stats
from ._bridge import run_on_loop as run_on_loop
from ._call import cancelled as cancelled
from ._call import check_cancelled as check_cancelled
from ._context import acontext as acontext
from ._dask import DaskExecutor as DaskExecutor
from ._declare import assert_parity as assert_parity
from ._decorator import CoroutineOffloader as CoroutineOffloader
from ._decorator import Offloader as Offloader
from ._errors import ExecutorShutdownError as ExecutorShutdownError
from ._errors import InitializerError as InitializerError
from ._errors import NotPicklableError as NotPicklableError
from ._errors import OverloadedError as OverloadedError
from ._errors import UnknownExecutorError as UnknownExecutorError
from ._errors import WorkerDiedError as WorkerDiedError
from ._facade import Facade as Facade
from ._facade import facade as facade
from ._iterate import agenerator as agenerator
from ._iterate import aiterate as aiterate
from ._lanes import Lane as Lane
from ._lanes import Lanes as Lanes
from ._pool import ThreadPool as ThreadPool
from ._process import ProcessPool as ProcessPool
from ._registry import Registry as Registry
from ._stats import ExecutorStats as ExecutorStats
from ._stats import Timings as Timings
from ._tornado import run_on_executor as run_on_executor
from ._web import StatsHandler as StatsHandler
from ._within import within as within

__all__ = (
    "AffineThread",
    "CoroutineOffloader",
    "DaskExecutor",
    "DeadlockError",
    "ExecutorShutdownError",
    "ExecutorStats",
    "Facade",
    "InitializerError",
    "Lane",
    "Lanes",
    "NotPicklableError",
    "Offloader",
    "OverloadedError",
    "ProcessPool",
    "Registry",
    "StatsHandler",
    "ThreadPool",
    "Timings",
    "UnknownExecutorError",
    "WorkerDiedError",
    "acontext",
    "agenerator",
    "aiterate",
    "assert_parity",
    "cancelled",
    "check_cancelled",
    "facade",
    "get_executor",
    "lane",
    "offload",
    "register",
    "run_on_executor",
    "run_on_loop",
    "shutdown",
    "stats",
    "within",
)

# Show the public path in reprs, tracebacks and docs, not the private module.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
