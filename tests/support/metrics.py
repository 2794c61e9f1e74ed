"""Reading a real ``/metrics`` answer: every sample by name and labels, parsed with
prometheus_client's own text parser."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Scrape:
    text: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include ``labels`` (0: none)."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def labels_of(self, name: str) -> set[str]:
        return {key for n, ls in self.samples for key, _ in ls if n == name}

    def label_values(self, name: str, label: str) -> set[str]:
        return {v for n, ls in self.samples for k, v in ls if n == name and k == label}


def parse(text: str) -> Scrape:
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return Scrape(text, samples)


def scrape(url: str) -> Scrape:
    answer = httpx.get(f"{url}/metrics", timeout=10)
    answer.raise_for_status()
    return parse(answer.text)
