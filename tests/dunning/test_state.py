"""The transition table, edge by edge, written out independently of the implementation."""

from __future__ import annotations

import pytest

from worker.dunning.state import TERMINAL, TRANSITIONS, DunningEvent, DunningState, next_state

S, E = DunningState, DunningEvent

# Every non-terminal edge, as the design states it (DESIGN §5).
EDGES = [
    # open: the first failure decides
    (S.OPEN, E.PAYMENT_FAILED, S.RETRYING),
    (S.OPEN, E.PAYMENT_FAILED_HARD, S.AWAITING_CUSTOMER),
    (S.OPEN, E.ACTION_REQUIRED, S.AWAITING_CUSTOMER),
    (S.OPEN, E.PAYMENT_SUCCEEDED, S.RECOVERED),
    (S.OPEN, E.PAYMENT_METHOD_UPDATED, S.RETRYING),
    (S.OPEN, E.RETRY_DUE, S.RETRYING),
    (S.OPEN, E.WINDOW_EXPIRED, S.CHURNED),
    (S.OPEN, E.INVOICE_CLOSED, S.CLOSED),
    (S.OPEN, E.CANCELLED_VOLUNTARILY, S.CLOSED),
    (S.OPEN, E.CANCELLED_INVOLUNTARILY, S.CHURNED),
    (S.OPEN, E.OPS_PAUSE, S.PAUSED),
    (S.OPEN, E.OPS_RESUME, S.OPEN),
    (S.OPEN, E.OPS_RESUME_AWAITING, S.OPEN),
    (S.OPEN, E.OPS_CLOSE, S.CLOSED),
    (S.OPEN, E.REPLACED_CARD_DECLINED, S.OPEN),
    (S.OPEN, E.PAYMENT_PROCESSING, S.RETRYING),
    # retrying
    (S.RETRYING, E.PAYMENT_FAILED, S.RETRYING),
    (S.RETRYING, E.PAYMENT_FAILED_HARD, S.AWAITING_CUSTOMER),
    (S.RETRYING, E.ACTION_REQUIRED, S.AWAITING_CUSTOMER),
    (S.RETRYING, E.PAYMENT_SUCCEEDED, S.RECOVERED),
    (S.RETRYING, E.PAYMENT_METHOD_UPDATED, S.RETRYING),
    (S.RETRYING, E.RETRY_DUE, S.RETRYING),
    (S.RETRYING, E.WINDOW_EXPIRED, S.CHURNED),
    (S.RETRYING, E.INVOICE_CLOSED, S.CLOSED),
    (S.RETRYING, E.CANCELLED_VOLUNTARILY, S.CLOSED),
    (S.RETRYING, E.CANCELLED_INVOLUNTARILY, S.CHURNED),
    (S.RETRYING, E.OPS_PAUSE, S.PAUSED),
    (S.RETRYING, E.OPS_RESUME, S.RETRYING),
    (S.RETRYING, E.OPS_RESUME_AWAITING, S.RETRYING),
    (S.RETRYING, E.OPS_CLOSE, S.CLOSED),
    (S.RETRYING, E.REPLACED_CARD_DECLINED, S.RETRYING),
    (S.RETRYING, E.PAYMENT_PROCESSING, S.RETRYING),
    # awaiting_customer
    (S.AWAITING_CUSTOMER, E.PAYMENT_FAILED, S.RETRYING),
    (S.AWAITING_CUSTOMER, E.PAYMENT_FAILED_HARD, S.AWAITING_CUSTOMER),
    (S.AWAITING_CUSTOMER, E.ACTION_REQUIRED, S.AWAITING_CUSTOMER),
    (S.AWAITING_CUSTOMER, E.PAYMENT_SUCCEEDED, S.RECOVERED),
    (S.AWAITING_CUSTOMER, E.PAYMENT_METHOD_UPDATED, S.RETRYING),
    (S.AWAITING_CUSTOMER, E.RETRY_DUE, S.AWAITING_CUSTOMER),
    (S.AWAITING_CUSTOMER, E.WINDOW_EXPIRED, S.CHURNED),
    (S.AWAITING_CUSTOMER, E.INVOICE_CLOSED, S.CLOSED),
    (S.AWAITING_CUSTOMER, E.CANCELLED_VOLUNTARILY, S.CLOSED),
    (S.AWAITING_CUSTOMER, E.CANCELLED_INVOLUNTARILY, S.CHURNED),
    (S.AWAITING_CUSTOMER, E.OPS_PAUSE, S.PAUSED),
    (S.AWAITING_CUSTOMER, E.OPS_RESUME, S.AWAITING_CUSTOMER),
    (S.AWAITING_CUSTOMER, E.OPS_RESUME_AWAITING, S.AWAITING_CUSTOMER),
    (S.AWAITING_CUSTOMER, E.OPS_CLOSE, S.CLOSED),
    (S.AWAITING_CUSTOMER, E.REPLACED_CARD_DECLINED, S.AWAITING_CUSTOMER),
    (S.AWAITING_CUSTOMER, E.PAYMENT_PROCESSING, S.AWAITING_CUSTOMER),
    # paused
    (S.PAUSED, E.PAYMENT_FAILED, S.PAUSED),
    (S.PAUSED, E.PAYMENT_FAILED_HARD, S.PAUSED),
    (S.PAUSED, E.ACTION_REQUIRED, S.PAUSED),
    (S.PAUSED, E.PAYMENT_SUCCEEDED, S.RECOVERED),
    (S.PAUSED, E.PAYMENT_METHOD_UPDATED, S.PAUSED),
    (S.PAUSED, E.RETRY_DUE, S.PAUSED),
    (S.PAUSED, E.WINDOW_EXPIRED, S.PAUSED),
    (S.PAUSED, E.INVOICE_CLOSED, S.CLOSED),
    (S.PAUSED, E.CANCELLED_VOLUNTARILY, S.CLOSED),
    (S.PAUSED, E.CANCELLED_INVOLUNTARILY, S.CHURNED),
    (S.PAUSED, E.OPS_PAUSE, S.PAUSED),
    (S.PAUSED, E.OPS_RESUME, S.RETRYING),
    (S.PAUSED, E.OPS_RESUME_AWAITING, S.AWAITING_CUSTOMER),
    (S.PAUSED, E.OPS_CLOSE, S.CLOSED),
    (S.PAUSED, E.REPLACED_CARD_DECLINED, S.PAUSED),
    (S.PAUSED, E.PAYMENT_PROCESSING, S.PAUSED),
]


@pytest.mark.parametrize(
    ("state", "event", "expected"), EDGES, ids=[f"{s}-{e}" for s, e, _ in EDGES]
)
def test_edge(state: DunningState, event: DunningEvent, expected: DunningState) -> None:
    assert next_state(state, event) is expected


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
@pytest.mark.parametrize("event", list(DunningEvent))
def test_terminal_states_absorb_every_event(terminal: DunningState, event: DunningEvent) -> None:
    # A late failure after recovery, a payment after churn (booked as a reactivation), a
    # duplicate of anything: the state does not move.
    assert next_state(terminal, event) is terminal


def test_the_table_is_exactly_the_design() -> None:
    expected = {(s, e): t for s, e, t in EDGES}
    expected |= {(t, e): t for t in TERMINAL for e in DunningEvent}
    assert dict(TRANSITIONS) == expected


def test_every_state_event_pair_is_decided() -> None:
    missing = [(s, e) for s in DunningState for e in DunningEvent if (s, e) not in TRANSITIONS]
    assert missing == []


def test_no_path_leaves_a_terminal_state() -> None:
    assert all(TRANSITIONS[(t, e)] is t for t in TERMINAL for e in DunningEvent)
