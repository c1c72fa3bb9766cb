"""Serving the registry's statistics over HTTP, from a Tornado application."""

from __future__ import annotations

import json
from typing import Any

import tornado.web

from ._api import default_registry
from ._registry import Registry


class StatsHandler(tornado.web.RequestHandler):
    """A Tornado ``RequestHandler`` that serves [`stats`][offload.stats] as JSON.

    ``GET`` returns ``{name: ExecutorStats, ...}``, or one name's stats with
    ``?name=io`` (404 for a name that is not registered). Pass
    ``{"registry": registry}`` as the handler's arguments to serve a registry
    other than the shared one. Put it behind your own authentication if the
    names and figures are not for everyone.

    Examples:
        >>> import offload, tornado.web
        >>> app = tornado.web.Application([(r"/offload/stats", offload.StatsHandler)])
        >>> mine = offload.Registry()
        >>> app.add_handlers(".*", [(r"/mine", offload.StatsHandler, {"registry": mine})])
    """

    registry: Registry

    def initialize(self, registry: Registry | None = None) -> None:
        """Take the registry to serve; the shared one by default."""
        self.registry = default_registry if registry is None else registry

    def get(self) -> None:
        """Write the statistics as JSON."""
        data: Any = self.registry.stats()
        name = self.get_query_argument("name", None)
        if name is not None:
            if name not in data:
                raise tornado.web.HTTPError(404, reason=f"no executor is registered as {name!r}")
            data = data[name]
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data))
