"""Imports every table so that ``Base.metadata`` is complete (Alembic, tests)."""

from worker.backfill import models as backfill
from worker.billing import models as billing
from worker.db import Base
from worker.dunning import models as dunning
from worker.email import models as email
from worker.ledger import models as ledger
from worker.links import models as links
from worker.webhooks import models as webhooks

__all__ = ["Base", "backfill", "billing", "dunning", "email", "ledger", "links", "webhooks"]
