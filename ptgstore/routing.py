"""One route per resource: the routing table's HTTP routes of one path merged into one `Resource`.

Starlette answers a wrong method with the `Allow` header of the first route whose path matched,
so a path served by several single-method routes advertised only some of its methods (`PATCH
/streams/x` -> `Allow: GET, HEAD`). A `Resource` holds every method of its path: a wrong method
gets 405 with all of them, and each method still has its own handler (and docstring: the API
description, see `openapi.py`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from starlette.routing import BaseRoute, Match, Route, request_response


class Resource(Route):
    """Every HTTP method of one path, each with its own handler (`HEAD` is served by `GET`'s)."""

    def __init__(self, path: str, handlers: Mapping[str, Callable]):
        self.handlers = {method.upper(): handler for method, handler in handlers.items()}
        first = next(iter(self.handlers.values()))
        super().__init__(path, first, methods=list(self.handlers), name=getattr(first, "__name__", None))
        self.apps = {method: request_response(handler) for method, handler in self.handlers.items()}

    def _handler_method(self, method: str) -> str:
        return "GET" if method == "HEAD" and "HEAD" not in self.handlers else method

    def matches(self, scope):
        match, child = super().matches(scope)
        if match is Match.FULL:
            child["endpoint"] = self.handlers[self._handler_method(scope["method"])]
        return match, child

    async def handle(self, scope, receive, send) -> None:
        method = self._handler_method(scope["method"])
        if method not in self.apps:
            return await super().handle(scope, receive, send)  # 405 with every method of the path
        await self.apps[method](scope, receive, send)


def endpoints(route: BaseRoute) -> dict[str, Callable]:
    """The handler of each HTTP method a route serves (`HEAD` left out: it is `GET` without a body)."""
    if isinstance(route, Resource):
        return dict(route.handlers)
    if isinstance(route, Route):
        return {method: route.endpoint for method in sorted(route.methods or {"GET"}) if method != "HEAD"}
    return {}


def by_resource(routes: Iterable[BaseRoute]) -> list[BaseRoute]:
    """`routes` with the HTTP routes of each path merged into one `Resource` (in the first one's place)."""
    out: list[BaseRoute] = []
    merged: dict[str, dict[str, Callable]] = {}
    for route in routes:
        if type(route) is not Route:  # sockets, mounts, and resources already whole
            out.append(route)
            continue
        handlers = merged.get(route.path)
        if handlers is None:
            handlers = merged[route.path] = {}
            out.append(route)  # a placeholder until every route of the path is known
        for method, handler in endpoints(route).items():
            if method in handlers:
                raise ValueError(f"{method} {route.path} is routed twice")
            handlers[method] = handler
    return [Resource(route.path, merged[route.path]) if type(route) is Route else route for route in out]
