"""One compact, coloured line per record for `tail --format pretty`.

Recognises result events, dead-letter records (by their `capture.*` headers) and
commands; anything else is shown as truncated JSON or text. Built from rich
`Text` parts, never markup, so record content cannot inject styles.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import ConsumerRecord
from rich.text import Text

from contracts import headers as dlq

_WIDTH = 160
_STATUS_STYLE = {"ingested": "green", "rejected": "bold red"}


def short(value: Any) -> str:
    """First block of a uuid: enough to tell events apart on a screen."""
    return str(value).split("-", 1)[0] if value else "-"


def pretty_line(
    record: ConsumerRecord[bytes, bytes],
    value: Any,
    how: str,
    headers: Mapping[str, Any],
    iso: Callable[[int], str],
) -> Text:
    line = Text.assemble(
        (iso(record.timestamp).replace("T", " ").removesuffix("Z"), "dim"),
        " ",
        (f"p{record.partition}@{record.offset}", "cyan"),
        " ",
    )
    if dlq.ERROR_KIND in headers:
        line.append_text(_dead_letter(record, value, how, headers))
    elif isinstance(value, dict) and "status" in value and "event_id" in value:
        line.append_text(_result(value))
    elif isinstance(value, dict) and "reading_depth" in value and "url" in value:
        line.append_text(_command(value))
    else:
        line.append_text(_other(value, how))
    return line


def _result(value: Mapping[str, Any]) -> Text:
    status = str(value.get("status"))
    text = Text.assemble(
        (f"{status:<8}", _STATUS_STYLE.get(status, "yellow")),
        " user=",
        (short(value.get("user_id")), "bold"),
        f" cmd={short(value.get('command_id'))}",
    )
    error = value.get("error")
    if status == "rejected" or error:
        kind = error.get("kind") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        text.append(f" {kind or 'error'}: ", "red")
        text.append(_clip(str(message or ""), 100))
        return text
    level, previous = value.get("engagement_level"), value.get("previous_engagement_level")
    text.append(" ")
    text.append(f"{previous}→{level}" if previous and previous != level else str(level), "magenta")
    text.append(f" artifact={short(value.get('artifact_id'))}")
    if value.get("artifact_created"):
        text.append(" new", "green")
    text.append(f" subspace={short(value.get('subspace_id'))}")
    if value.get("subspace_created"):
        text.append(" new", "green")
    margin = value.get("assignment_margin")
    if isinstance(margin, int | float):
        text.append(f" margin={margin:.3f}")
    return text


def _dead_letter(
    record: ConsumerRecord[bytes, bytes], value: Any, how: str, headers: Mapping[str, Any]
) -> Text:
    source = (
        f"{headers.get(dlq.SOURCE_TOPIC, '?')}[{headers.get(dlq.SOURCE_PARTITION, '?')}]"
        f"@{headers.get(dlq.SOURCE_OFFSET, '?')}"
    )
    text = Text.assemble(
        ("DLQ     ", "bold magenta"),
        (f" {headers.get(dlq.ERROR_KIND)}: ", "red"),
        _clip(str(headers.get(dlq.ERROR_MESSAGE, "")), 90),
        (f" from {source}", "dim"),
    )
    key = record.key.decode("utf-8", "replace") if record.key is not None else None
    text.append(f" key={short(key)}")
    text.append(f" {record.serialized_value_size}B {how}", "dim")
    return text


def _command(value: Mapping[str, Any]) -> Text:
    return Text.assemble(
        ("command ", "blue"),
        " user=",
        (short(value.get("user_id")), "bold"),
        f" cmd={short(value.get('command_id'))}",
        f" depth={value.get('reading_depth')} ",
        _clip(str(value.get("url")), 80),
    )


def _other(value: Any, how: str) -> Text:
    shown = json.dumps(value, separators=(",", ":")) if how == "json" else str(value)
    return Text.assemble((f"{how:<8} ", "yellow"), _clip(shown, _WIDTH))


def _clip(text: str, width: int) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"
