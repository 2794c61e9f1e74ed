"""Everything a process needs at run time, built once from :class:`Settings`.

Tasks reach it as ``self.app.runtime``; the intake and the CLI build their own. Nothing is
created at import time, and each piece is created on first use so that a command only pays
for what it touches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from worker.billing.budget import StripeBudget, budget_for
from worker.billing.stripe_client import StripeGateway
from worker.config import Policy, load_policy
from worker.db import make_engine, make_sessionmaker, session_scope
from worker.email.sender import Sender, sender_from_url
from worker.settings import Settings

# A card-update click: the customer is waiting (see portal_gateway).
PORTAL_ATTEMPTS = 2
PORTAL_RETRY_WAIT_S = 0.25
PORTAL_TIMEOUT_S = 5.0
PORTAL_BUDGET_WAIT_S = 1.0


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        policy: Policy | None = None,
        gateway: StripeGateway | None = None,
        sender: Sender | None = None,
    ) -> None:
        self.settings = settings
        if policy is not None:
            self.__dict__["policy"] = policy
        if gateway is not None:
            self.__dict__["gateway"] = gateway
        if sender is not None:
            self.__dict__["sender"] = sender

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_sessionmaker(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.sessions) as session:
            yield session

    @cached_property
    def policy(self) -> Policy:
        return load_policy(self.settings.config_path)

    @cached_property
    def gateway(self) -> StripeGateway | None:
        """None when no STRIPE_API_KEY is set: decline details cannot be fetched then."""
        key = self.settings.stripe_api_key
        if key is None:
            return None
        return StripeGateway(
            key.reveal(),
            api_base=self.settings.stripe_api_base,
            timeout_s=self.settings.stripe_timeout_s,
            budget=self.stripe_budget,
        )

    @cached_property
    def portal_gateway(self) -> StripeGateway | None:
        """The gateway of a customer's click (the intake's card-update link): bounded to a
        few seconds, so a slow or rate-limited Stripe shows the fallback page instead of a
        spinning browser. One retry, quickly; a budget wait of at most a second."""
        key = self.settings.stripe_api_key
        if key is None:
            return None
        return StripeGateway(
            key.reveal(),
            api_base=self.settings.stripe_api_base,
            attempts=PORTAL_ATTEMPTS,
            wait=lambda _state: PORTAL_RETRY_WAIT_S,
            timeout_s=min(self.settings.stripe_timeout_s, PORTAL_TIMEOUT_S),
            budget=self.stripe_budget,
            budget_wait_s=PORTAL_BUDGET_WAIT_S,
        )

    @cached_property
    def stripe_budget(self) -> StripeBudget:
        """The fleet's shared Stripe request budget (Redis, or the database)."""
        return budget_for(self.settings, lambda: self.engine)

    @cached_property
    def sender(self) -> Sender:
        url = self.settings.smtp_url.reveal() if self.settings.smtp_url else None
        if url and url.startswith("file://"):
            url = None
        return sender_from_url(url, outbox=self.settings.outbox_dir)

    def close(self) -> None:
        if "stripe_budget" in self.__dict__:
            self.stripe_budget.close()
        if "engine" in self.__dict__:
            self.engine.dispose()
