"""A page in the session's headless Chromium (``browser`` fixture, tests/conftest.py) that
records what a self-contained report page must never do: log a console error or warning,
throw, open a dialog (a script ran), or fetch anything from outside."""

from __future__ import annotations

from dataclasses import dataclass

from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, Request


@dataclass
class Rendered:
    page: Page
    problems: list[str]  # console errors and warnings, page errors, dialogs, outside requests


def watched_page(browser: Browser) -> Rendered:
    """A new page, watched from before anything loads into it."""
    page = browser.new_page()
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type in {"error", "warning"}:
            problems.append(f"console {message.type}: {message.text}")

    def dialog(opened: Dialog) -> None:
        problems.append(f"{opened.type} dialog opened: {opened.message}")  # script ran
        opened.dismiss()

    def request(sent: Request) -> None:
        if not sent.url.startswith(("data:", "file:")):
            problems.append(f"request to {sent.url}")  # not self-contained

    page.on("console", console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("dialog", dialog)
    page.on("request", request)
    return Rendered(page, problems)
