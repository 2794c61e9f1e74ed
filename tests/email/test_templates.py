"""The email templates on disk: every directory is complete, compiles and has a code twin."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.paths import REPO
from worker.email.messages import EmailContext, EmailKind, build_context, registered_kinds
from worker.email.render import default_templates_dir, make_environment, render

EMAIL_DIR = REPO / "templates" / "email"
DIRECTORIES = sorted(p.name for p in EMAIL_DIR.iterdir() if p.is_dir() and p.name != "_base")
FILES = ("subject.txt", "body.txt", "body.html")

CONTEXT = EmailContext(
    customer_name="Jane Doe",
    amount_due=4900,
    currency="usd",
    locale="en_US",
    update_url="https://billing.example.com/u/token",
    invoice_number="INV-0001",
    product_name="Pro",
    decline_reason="insufficient_funds",
    next_attempt_at=datetime(2025, 3, 4, 8, 0, tzinfo=UTC),
    access_ends_at=datetime(2025, 3, 18, 8, 0, tzinfo=UTC),
    timezone="America/New_York",
    company_name="Acme",
    support_email="help@acme.example",
)


def test_templates_are_found_from_the_package() -> None:
    assert default_templates_dir() / "email" == EMAIL_DIR


def test_every_kind_has_a_directory_and_every_directory_a_kind() -> None:
    assert sorted(kind.value for kind in EmailKind) == DIRECTORIES
    assert registered_kinds() == set(EmailKind)


@pytest.mark.parametrize("name", ["_base", *DIRECTORIES])
def test_every_file_exists_and_compiles(name: str) -> None:
    env = make_environment(EMAIL_DIR.parent)
    for filename in FILES:
        assert (EMAIL_DIR / name / filename).is_file()
        env.get_template(f"email/{name}/{filename}")  # raises TemplateSyntaxError


@pytest.mark.parametrize("name", DIRECTORIES)
def test_children_extend_the_base(name: str) -> None:
    for filename in FILES:
        source = (EMAIL_DIR / name / filename).read_text()
        assert source.startswith(f'{{% extends "email/_base/{filename}" %}}')


@pytest.mark.parametrize("name", DIRECTORIES)
def test_subject_renders_to_one_line(name: str) -> None:
    env = make_environment(EMAIL_DIR.parent)
    raw = env.get_template(f"email/{name}/subject.txt").render(
        build_context(EmailKind(name), CONTEXT)
    )
    assert raw.strip()
    assert "\n" not in raw.strip()


def test_render_joins_a_multiline_subject(tmp_path: Path) -> None:
    folder = tmp_path / "email" / "odd"
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text("Hello\n  {{ name }}\n\nagain\n")
    (folder / "body.txt").write_text("{{ subject }}")
    (folder / "body.html").write_text("<title>{{ subject }}</title>")
    rendered = render(make_environment(tmp_path), "odd", {"name": "<Jane>"})
    assert rendered.subject == "Hello <Jane> again"
    assert rendered.html == "<title>Hello &lt;Jane&gt; again</title>\n"
