"""The dunning state machine, as data (DESIGN §5, STYLE H9).

Only the table lives here: states, events, ``TRANSITIONS`` and :func:`next_state`. Side
effects (planning retries, emails, ledger rows) are keyed off the ``(old, new, event)`` triple
in ``worker.dunning.transitions``; nothing in this module does anything.

Duplicate and out-of-order events are explicit self-transitions, each with a comment. Terminal
states answer every event with themselves: a late ``payment_failed`` after ``recovered``
changes nothing, and a payment after ``churned`` stays ``churned`` (the ledger books it as a
reactivation), so no case is ever both recovered and churned.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class DunningState(StrEnum):
    OPEN = "open"  # created from a failure, before its first transition
    RETRYING = "retrying"  # we (or the provider) retry on a schedule
    AWAITING_CUSTOMER = "awaiting_customer"  # hard decline / authentication: no blind retries
    PAUSED = "paused"  # ops hold: nothing runs
    RECOVERED = "recovered"
    CHURNED = "churned"  # the window ran out and the final action was taken
    CLOSED = "closed"  # voided, uncollectible elsewhere, cancelled voluntarily, closed by ops


class DunningEvent(StrEnum):
    PAYMENT_FAILED = "payment_failed"  # a retryable decline
    PAYMENT_FAILED_HARD = "payment_failed_hard"  # the customer must act (new card, stop, fraud)
    ACTION_REQUIRED = "action_required"  # the customer must authenticate (3DS)
    # a decline on a card the customer has replaced since: the new card's retry stands
    REPLACED_CARD_DECLINED = "replaced_card_declined"
    PAYMENT_SUCCEEDED = "payment_succeeded"
    # a charge the provider accepted and has not settled (a bank debit): nothing else is
    # tried until it ends in payment_succeeded or a failure
    PAYMENT_PROCESSING = "payment_processing"
    PAYMENT_METHOD_UPDATED = "payment_method_updated"
    RETRY_DUE = "retry_due"  # a planned retry starts
    WINDOW_EXPIRED = "window_expired"  # the final action was taken
    INVOICE_CLOSED = "invoice_closed"  # voided / marked uncollectible outside our final action
    CANCELLED_VOLUNTARILY = "cancelled_voluntarily"
    CANCELLED_INVOLUNTARILY = "cancelled_involuntarily"  # provider cancelled for non-payment
    OPS_PAUSE = "ops_pause"
    OPS_RESUME = "ops_resume"
    # ops resume a case whose latest decline needs the customer (and no new card since)
    OPS_RESUME_AWAITING = "ops_resume_awaiting"
    OPS_CLOSE = "ops_close"


TERMINAL: frozenset[DunningState] = frozenset(
    {DunningState.RECOVERED, DunningState.CHURNED, DunningState.CLOSED}
)

S, E = DunningState, DunningEvent

_ACTIVE_COMMON: dict[DunningEvent, DunningState] = {
    E.PAYMENT_FAILED: S.RETRYING,
    E.PAYMENT_FAILED_HARD: S.AWAITING_CUSTOMER,
    E.ACTION_REQUIRED: S.AWAITING_CUSTOMER,
    E.PAYMENT_SUCCEEDED: S.RECOVERED,
    E.WINDOW_EXPIRED: S.CHURNED,
    E.INVOICE_CLOSED: S.CLOSED,
    E.CANCELLED_VOLUNTARILY: S.CLOSED,
    E.CANCELLED_INVOLUNTARILY: S.CHURNED,
    E.OPS_PAUSE: S.PAUSED,
    E.OPS_CLOSE: S.CLOSED,
}

TRANSITIONS: Mapping[tuple[DunningState, DunningEvent], DunningState] = {
    # open: the case exists, its first failure decides where it goes.
    **{(S.OPEN, e): s for e, s in _ACTIVE_COMMON.items()},
    (S.OPEN, E.PAYMENT_METHOD_UPDATED): S.RETRYING,  # a new card before any plan: retry it
    (S.OPEN, E.RETRY_DUE): S.RETRYING,  # ops retry-now on a fresh case
    (S.OPEN, E.OPS_RESUME): S.OPEN,  # nothing paused: a no-op
    (S.OPEN, E.OPS_RESUME_AWAITING): S.OPEN,
    (S.OPEN, E.REPLACED_CARD_DECLINED): S.OPEN,  # recorded on that card; nothing changes
    (S.OPEN, E.PAYMENT_PROCESSING): S.RETRYING,  # ops retry-now on a fresh case, pending
    # retrying
    **{(S.RETRYING, e): s for e, s in _ACTIVE_COMMON.items()},
    # (retrying, payment_failed) -> retrying: another soft decline, the next retry is planned.
    (S.RETRYING, E.PAYMENT_METHOD_UPDATED): S.RETRYING,  # new card: one prompt retry
    (S.RETRYING, E.RETRY_DUE): S.RETRYING,  # the planned retry runs
    (S.RETRYING, E.OPS_RESUME): S.RETRYING,  # duplicate resume: a no-op
    (S.RETRYING, E.OPS_RESUME_AWAITING): S.RETRYING,
    (S.RETRYING, E.REPLACED_CARD_DECLINED): S.RETRYING,  # the new card's retry stands
    (S.RETRYING, E.PAYMENT_PROCESSING): S.RETRYING,  # our retry is settling: wait for it
    # awaiting_customer: no blind retries until the customer (or the network updater) acts.
    **{(S.AWAITING_CUSTOMER, e): s for e, s in _ACTIVE_COMMON.items()},
    # (awaiting_customer, payment_failed_hard|action_required) -> itself: repeated news.
    (S.AWAITING_CUSTOMER, E.PAYMENT_METHOD_UPDATED): S.RETRYING,  # card fixed: retry once
    (S.AWAITING_CUSTOMER, E.RETRY_DUE): S.AWAITING_CUSTOMER,  # ops retry-now: still waiting
    (S.AWAITING_CUSTOMER, E.OPS_RESUME): S.AWAITING_CUSTOMER,  # duplicate resume: a no-op
    (S.AWAITING_CUSTOMER, E.OPS_RESUME_AWAITING): S.AWAITING_CUSTOMER,
    (S.AWAITING_CUSTOMER, E.REPLACED_CARD_DECLINED): S.AWAITING_CUSTOMER,
    (S.AWAITING_CUSTOMER, E.PAYMENT_PROCESSING): S.AWAITING_CUSTOMER,  # ops retry, settling
    # paused: facts are recorded, nothing is planned; only success or closing ends it.
    (S.PAUSED, E.PAYMENT_FAILED): S.PAUSED,  # recorded (e.g. provider retry), not acted on
    (S.PAUSED, E.PAYMENT_FAILED_HARD): S.PAUSED,
    (S.PAUSED, E.ACTION_REQUIRED): S.PAUSED,
    (S.PAUSED, E.REPLACED_CARD_DECLINED): S.PAUSED,
    (S.PAUSED, E.PAYMENT_SUCCEEDED): S.RECOVERED,
    (S.PAUSED, E.PAYMENT_PROCESSING): S.PAUSED,  # a retry claimed just before the pause
    (S.PAUSED, E.PAYMENT_METHOD_UPDATED): S.PAUSED,  # remembered; resume retries it
    (S.PAUSED, E.RETRY_DUE): S.PAUSED,  # a retry claimed just before the pause: skipped
    (S.PAUSED, E.WINDOW_EXPIRED): S.PAUSED,  # the window waits for ops
    (S.PAUSED, E.INVOICE_CLOSED): S.CLOSED,
    (S.PAUSED, E.CANCELLED_VOLUNTARILY): S.CLOSED,
    (S.PAUSED, E.CANCELLED_INVOLUNTARILY): S.CHURNED,
    (S.PAUSED, E.OPS_PAUSE): S.PAUSED,  # duplicate pause: a no-op
    (S.PAUSED, E.OPS_RESUME): S.RETRYING,
    (S.PAUSED, E.OPS_RESUME_AWAITING): S.AWAITING_CUSTOMER,  # no blind retries after it
    (S.PAUSED, E.OPS_CLOSE): S.CLOSED,
    # terminal states absorb everything: duplicates, late and out-of-order events.
    **{(t, e): t for t in TERMINAL for e in DunningEvent},
}


class IllegalTransitionError(ValueError):
    def __init__(self, state: DunningState, event: DunningEvent) -> None:
        super().__init__(f"no transition from {state} on {event}")
        self.state, self.event = state, event


def next_state(state: DunningState, event: DunningEvent) -> DunningState:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransitionError(state, event) from None
