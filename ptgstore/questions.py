"""Questions about streams asked by many sockets at once, answered together (the hub's `$` and
generations for sockets opening together)."""
from __future__ import annotations

import asyncio
from typing import Sequence

class Questions:
    """Questions about streams asked by many sockets at once, answered together: one round trip
    (`fetch(stream ids)`) at a time, each question by a round trip sent after it was asked."""

    def __init__(self, fetch, name: str):
        self.fetch = fetch
        self.name = name
        self._asked: dict[str, list[asyncio.Future]] = {}
        self._answering: asyncio.Task | None = None

    async def ask(self, sids: Sequence[str]) -> list:
        loop = asyncio.get_running_loop()
        answers = []
        for sid in sids:
            answers.append(loop.create_future())
            self._asked.setdefault(sid, []).append(answers[-1])
        if self._answering is None or self._answering.done():
            self._answering = loop.create_task(self._answer(), name=self.name)
        return list(await asyncio.gather(*answers))

    async def _answer(self) -> None:
        while self._asked:
            asked, self._asked = self._asked, {}
            try:
                values = await self.fetch(list(asked))
            except Exception as exc:  # handed to every asker, who raises it
                for waiting in asked.values():
                    for answer in waiting:
                        if not answer.done():
                            answer.set_exception(exc)
                continue
            for waiting, value in zip(asked.values(), values):
                for answer in waiting:
                    if not answer.done():
                        answer.set_result(value)
