"""The Grafana dashboard (``config/grafana/dunning.json``) read the way a test needs it: every
panel's PromQL, the metrics it names, the label matchers it uses and the labels it groups by.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.support.metrics import Scrape
from tests.support.paths import REPO

DASHBOARD = REPO / "config" / "grafana" / "dunning.json"

# A metric selector: the name, then optional {matchers}.
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@dataclass(frozen=True)
class Query:
    panel: str
    expr: str

    def metrics(self) -> set[str]:
        return {m.group(1) for m in _SELECTOR.finditer(self.expr) if _is_ours(m.group(1))}

    def matchers(self) -> Iterator[tuple[str, str, str, str]]:
        """(metric, label, operator, value) for every matcher of every selector."""
        for selector in _SELECTOR.finditer(self.expr):
            if _is_ours(selector.group(1)) and selector.group(2):
                for matcher in _MATCHER.finditer(selector.group(2)):
                    yield (selector.group(1), *matcher.groups())

    def grouping_labels(self) -> set[str]:
        return {
            label.strip()
            for group in _GROUPING.finditer(self.expr)
            for label in group.group(1).split(",")
            if label.strip()
        }


def _is_ours(name: str) -> bool:
    return name.startswith("dunning_")


def load() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def queries(dashboard: dict[str, Any]) -> list[Query]:
    return [
        Query(panel["title"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def drift(dashboard: dict[str, Any], exposed: Scrape) -> list[str]:
    """What the dashboard asks for that ``exposed`` (a real scrape) does not have: a metric
    name, a label, or a value an equality matcher wants."""
    problems: list[str] = []
    names = exposed.names()
    for query in queries(dashboard):
        where = f"{query.panel!r}: {query.expr}"
        wanted = query.metrics()
        if not wanted:
            problems.append(f"{where}: names no dunning_ metric")
        for metric in sorted(wanted - names):
            problems.append(f"{where}: {metric} is not exposed")
        for metric, label, operator, value in query.matchers():
            if label not in exposed.labels_of(metric):
                problems.append(f"{where}: {metric} has no label {label!r}")
            elif operator == "=" and value not in exposed.label_values(metric, label):
                problems.append(f"{where}: no {metric} sample with {label}={value!r}")
        carried = set().union(*(exposed.labels_of(m) for m in wanted)) if wanted else set()
        for label in sorted(query.grouping_labels() - carried):
            problems.append(f"{where}: groups by {label!r}, which none of its metrics carries")
    return problems
