"""The Lua scripts of ``scripts/``, loaded once per server and called by SHA.

Every key a script touches is passed in ``KEYS``, so each runs on the one Redis Cluster node
that owns the slot of its keys' shared hash tag.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from redis.exceptions import NoScriptError

SCRIPT_NAMES = (
    "open_session",
    "acquire",
    "commit",
    "forward",
    "heartbeat",
    "release",
    "reannounce",
    "tenant_admit",
)


@dataclass(frozen=True)
class LuaScript:
    name: str
    source: str
    sha: str


def _read(name: str) -> LuaScript:
    source = files("worker.protocol").joinpath("scripts", f"{name}.lua").read_text()
    return LuaScript(name, source, hashlib.sha1(source.encode()).hexdigest())


class Scripts:
    """Named scripts; :meth:`queue` adds a call to a pipeline, :meth:`call` runs one now."""

    def __init__(self) -> None:
        self.by_name = {name: _read(name) for name in SCRIPT_NAMES}

    def load(self, client: Any) -> None:
        """SCRIPT LOAD everything (on a cluster, redis-py sends it to every primary)."""
        for script in self.by_name.values():
            client.script_load(script.source)

    def queue(self, pipe: Any, name: str, keys: list[str], args: list[Any]) -> None:
        # not pipe.evalsha(): redis-py's cluster pipeline refuses that method by name, yet routes
        # the raw command by its first key like any other, which is all a script call needs
        pipe.execute_command("EVALSHA", self.by_name[name].sha, len(keys), *keys, *args)

    def call(self, client: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        script = self.by_name[name]
        try:
            return client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # a restarted or failed-over server lost its script cache
            self.load(client)
            return client.evalsha(script.sha, len(keys), *keys, *args)
