"""Generated commands as the Kafka records the bench sends: id, key and the value's text."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

_IDS = re.compile(r'"command_id":"([0-9a-f-]{36})","user_id":"([0-9a-f-]{36})"')


@dataclass(frozen=True, slots=True)
class Command:
    command_id: str
    key: bytes
    text: str


def commands_of(lines: Sequence[str]) -> list[Command]:
    """Ids and key of each generated line, without parsing the 384 numbers of each."""
    out = []
    for line in lines:
        match = _IDS.match(line, 1)  # the generator writes these two fields first
        if match is None:
            data = json.loads(line)
            command_id, user_id = str(data["command_id"]), str(data["user_id"])
        else:
            command_id, user_id = match.group(1), match.group(2)
        out.append(Command(command_id, user_id.encode(), line))
    return out
