"""A year of revenue in three currencies (tests/support/finance_year.py) in a SQLite database
built once: the presentation tests only read it, through the ``dunning`` command."""

from __future__ import annotations

import pytest

from tests.support.finance_year import finance_year, month
from tests.support.paths import REPO
from worker import clock
from worker.config import load_policy
from worker.db import make_engine, make_sessionmaker
from worker.migrate import upgrade


@pytest.fixture(scope="session")
def finance_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('finance') / 'dunning.db'}"
    upgrade(url)
    engine = make_engine(url)
    policy = load_policy(REPO / "config" / "dunning.toml")
    with clock.use_clock(clock.ManualClock(month(0))) as manual:
        assert isinstance(manual, clock.ManualClock)
        with make_sessionmaker(engine)() as session:
            finance_year(session, policy, manual)
    engine.dispose()
    return url
