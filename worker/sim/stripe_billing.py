"""How the simulated Stripe account's objects change, shared by the control API and the HTTP API.

`Billing` extends `Webhooks`: new and refreshed payment methods (with their card scripts),
coupons and discounts, finalizing invoices, cancelling subscriptions, and charge attempts:
payment intents, charges and invoice payments, the invoice and subscription status they lead to,
and the events Stripe sends for each. Callers hold the state lock.
"""

from __future__ import annotations

from typing import Any

from worker.sim import stripe_objects as so
from worker.sim.stripe_specs import PROCESSING, CardSpec, CouponSpec, Decline, card_script
from worker.sim.stripe_webhooks import Webhooks


class Billing(Webhooks):
    """The billing layer of `StripePeer`: object changes and charge attempts, with events."""

    def _new_payment_method(
        self, pm_id: str, cust: dict[str, Any], spec: CardSpec
    ) -> dict[str, Any]:
        card = so.card_details(
            brand=spec.brand,
            last4=spec.last4,
            exp_month=spec.exp_month,
            exp_year=spec.exp_year,
            fingerprint=spec.fingerprint or so.new_fingerprint(),
            funding=spec.funding,
            country=spec.country,
        )
        pm = self._store(
            so.payment_method(
                pm_id=pm_id,
                customer_id=cust["id"],
                created=self._now(),
                email=cust["email"],
                name=cust["name"],
                card=card,
            )
        )
        self._scripts[pm_id] = card_script(spec)
        return pm

    def _new_discount(self, spec: CouponSpec, sub: dict[str, Any], currency: str) -> dict[str, Any]:
        now = self._now()
        cpn = self._store(
            so.coupon(
                coupon_id=so.new_id("cpn", 8),
                percent_off=spec.percent_off,
                amount_off=spec.amount_off,
                currency=currency,
                duration=spec.duration,
                duration_in_months=spec.duration_in_months,
                created=now,
            )
        )
        months = spec.duration_in_months if spec.duration == "repeating" else None
        return self._store(
            so.discount(
                di_id=so.new_id("di"),
                cpn=cpn,
                customer_id=sub["customer"],
                sub_id=sub["id"],
                start=now,
                end=so.add_interval(now, "month", months) if months else None,
            )
        )

    def _refresh_card(self, pm: dict[str, Any], spec: CardSpec) -> dict[str, Any]:
        before = self._view(pm)
        card = pm["card"]
        fingerprint = spec.fingerprint or (
            card["fingerprint"] if spec.last4 == card["last4"] else so.new_fingerprint()
        )
        card.update(
            brand=spec.brand,
            display_brand=spec.brand,
            last4=spec.last4,
            exp_month=spec.exp_month,
            exp_year=spec.exp_year,
            fingerprint=fingerprint,
            funding=spec.funding,
            country=spec.country,
        )
        self._scripts[pm["id"]] = card_script(spec)
        self._emit(
            "payment_method.automatically_updated", pm, so.diff_previous(before, self._view(pm))
        )
        return pm

    def _default_pm(self, inv: dict[str, Any]) -> str:
        sub = self._objs[inv["subscription"]]
        cust = self._objs[inv["customer"]]
        pm_id: str = (
            sub["default_payment_method"] or cust["invoice_settings"]["default_payment_method"]
        )
        return pm_id

    def _finalize(self, inv: dict[str, Any], cust: dict[str, Any]) -> None:
        now = self._now()
        number = f"{cust['invoice_prefix']}-{cust['next_invoice_sequence']:04d}"
        cust["next_invoice_sequence"] += 1
        inv.update(
            status="open",
            number=number,
            effective_at=now,
            webhooks_delivered_at=now,
            hosted_invoice_url=f"https://invoice.stripe.test/i/{inv['id']}",
            invoice_pdf=f"https://invoice.stripe.test/i/{inv['id']}/pdf",
        )
        inv["status_transitions"]["finalized_at"] = now

    def _cancel(
        self, sub: dict[str, Any], reason: str, comment: str | None, feedback: str | None
    ) -> None:
        now = self._now()
        sub.update(
            status="canceled",
            canceled_at=now,
            ended_at=now,
            cancel_at=None,
            cancellation_details={"comment": comment, "feedback": feedback, "reason": reason},
        )
        for inv_id in self._by_type["invoice"]:  # Stripe stops automatic collection
            inv = self._objs[inv_id]
            if inv["subscription"] == sub["id"] and inv["status"] == "open":
                inv["auto_advance"] = False
        self._emit("customer.subscription.deleted", sub)

    def _mark_uncollectible_now(self, inv: dict[str, Any]) -> None:
        inv.update(status="uncollectible", auto_advance=False)
        inv["status_transitions"]["marked_uncollectible_at"] = self._now()
        self._emit("invoice.marked_uncollectible", inv)

    # ---------------------------------------------------------------------------- payments

    def _attempt(self, inv: dict[str, Any], pm_id: str, *, automatic: bool) -> str:
        """One charge attempt: "paid", "declined", "action_required" or "processing"."""
        outcome = self._scripts[pm_id].next()
        self._attempts[inv["id"]] += 1
        pi = self._payment_intent_for(inv, pm_id)
        inv["attempted"] = True
        if automatic or inv["attempt_count"] == 0:
            inv["attempt_count"] += 1
        pm = self._objs[pm_id]
        if outcome == PROCESSING:
            ch = self._store(
                so.charge(ch_id=so.new_id("ch"), pi=pi, pm=pm, created=self._now(), decline=None)
            )
            ch.update(status="pending", paid=False, captured=False, amount_captured=0)
            pi.update(
                status="processing",
                latest_charge=ch["id"],
                last_payment_error=None,
                next_action=None,
            )
            inv["charge"] = ch["id"]  # the invoice stays open until the bank settles
            self._emit("charge.pending", ch)
            self._emit("payment_intent.processing", pi)
            return "processing"
        if not isinstance(outcome, Decline):
            self._settle_paid(inv, pi, pm)
            return "paid"
        self._decline(inv, pi, pm, outcome)
        return "action_required" if outcome.requires_action else "declined"

    def _settle_processing(self, inv: dict[str, Any], outcome: Decline | str) -> None:
        """The bank settles a pending debit: the same charge succeeds or fails."""
        pi = self._objs[inv["payment_intent"]]
        if pi["status"] != "processing":
            raise ValueError(f"invoice {inv['id']} has no processing payment")
        pm, ch = self._objs[pi["payment_method"]], self._objs[pi["latest_charge"]]
        if isinstance(outcome, Decline):
            self._decline(inv, pi, pm, outcome, ch=ch)
        else:
            self._settle_paid(inv, pi, pm, ch=ch)

    def _decline(
        self,
        inv: dict[str, Any],
        pi: dict[str, Any],
        pm: dict[str, Any],
        outcome: Decline,
        *,
        ch: dict[str, Any] | None = None,
    ) -> None:
        fields = outcome.details()
        error = {
            "type": "card_error",
            **{
                k: fields[k]
                for k in (
                    "code",
                    "decline_code",
                    "advice_code",
                    "network_decline_code",
                    "network_advice_code",
                    "message",
                )
            },
            "charge": None,
            "doc_url": so.doc_url(fields["code"]),
            "payment_method": self._view(pm),
        }
        if outcome.requires_action:
            pi.update(
                status="requires_action",
                last_payment_error=error,
                next_action={
                    "type": "use_stripe_sdk",
                    "use_stripe_sdk": {
                        "type": "three_d_secure_redirect",
                        "stripe_js": f"https://hooks.stripe.test/3d_secure_2/{pi['id']}",
                    },
                },
            )
            self._emit("payment_intent.requires_action", pi)
            self._emit("invoice.payment_action_required", inv)
            self._subscription_after_attempt(inv, paid=False)
            return
        failed = so.charge(ch_id=so.new_id("ch"), pi=pi, pm=pm, created=self._now(), decline=fields)
        if ch is None:
            ch = self._store(failed)
        else:  # a pending debit the bank refused: the same charge fails
            ch.update({k: v for k, v in failed.items() if k not in ("id", "created")})
        error["charge"] = ch["id"]
        pi.update(
            status="requires_payment_method",
            latest_charge=ch["id"],
            last_payment_error=error,
            next_action=None,
        )
        inv["charge"] = ch["id"]
        self._emit("charge.failed", ch)
        self._emit("payment_intent.payment_failed", pi)
        self._emit("invoice.payment_failed", inv)
        self._subscription_after_attempt(inv, paid=False)

    def _payment_intent_for(self, inv: dict[str, Any], pm_id: str) -> dict[str, Any]:
        if inv["payment_intent"] is None:
            now = self._now()
            pi = self._store(
                so.payment_intent(pi_id=so.new_id("pi"), inv=inv, created=now, pm_id=pm_id)
            )
            inpay = self._store(
                so.invoice_payment(
                    inpay_id=so.new_id("inpay"), inv=inv, pi_id=pi["id"], created=now
                )
            )
            inv["payment_intent"], inv["_payment"] = pi["id"], inpay["id"]
        pi = self._objs[inv["payment_intent"]]
        pi["payment_method"] = pm_id
        return pi

    def _settle_paid(
        self,
        inv: dict[str, Any],
        pi: dict[str, Any],
        pm: dict[str, Any],
        *,
        ch: dict[str, Any] | None = None,
    ) -> None:
        now = self._now()
        paid = so.charge(ch_id=so.new_id("ch"), pi=pi, pm=pm, created=now, decline=None)
        if ch is None:
            ch = self._store(paid)
        else:  # a pending debit the bank settled: the same charge succeeds
            ch.update({k: v for k, v in paid.items() if k not in ("id", "created")})
        pi.update(
            status="succeeded",
            amount_received=pi["amount"],
            latest_charge=ch["id"],
            last_payment_error=None,
            next_action=None,
        )
        self._mark_invoice_paid(inv, now)
        inv["charge"] = ch["id"]
        inpay = self._objs[inv["_payment"]]
        inpay.update(status="paid", amount_paid=inv["amount_paid"])
        inpay["status_transitions"]["paid_at"] = now
        self._emit("charge.succeeded", ch)
        self._emit("payment_intent.succeeded", pi)
        self._emit("invoice.paid", inv)
        self._emit("invoice.payment_succeeded", inv)
        self._subscription_after_attempt(inv, paid=True)

    def _mark_paid_out_of_band(self, inv: dict[str, Any]) -> None:
        self._mark_invoice_paid(inv, self._now())
        inv["paid_out_of_band"] = True
        self._emit("invoice.paid", inv)
        self._subscription_after_attempt(inv, paid=True)

    @staticmethod
    def _mark_invoice_paid(inv: dict[str, Any], now: int) -> None:
        inv.update(
            status="paid",
            paid=True,
            amount_paid=inv["amount_due"],
            amount_remaining=0,
            auto_advance=False,
        )
        inv["status_transitions"]["paid_at"] = now

    def _subscription_after_attempt(self, inv: dict[str, Any], *, paid: bool) -> None:
        sub = self._objs[inv["subscription"]]
        if sub["latest_invoice"] != inv["id"]:
            return
        flips = {("past_due", True): "active", ("active", False): "past_due"}
        status = flips.get((sub["status"], paid))
        if status is not None:
            before = self._view(sub)
            sub["status"] = status
            self._emit_update("customer.subscription.updated", sub, before)
