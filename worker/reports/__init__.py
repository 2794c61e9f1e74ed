"""Finance reports from the revenue ledger: retention (NRR/GRR with involuntary churn as its
own line) and recovery. One query path (:mod:`worker.reports.build`) yields a
:class:`~worker.reports.model.Report`; every format renders that same object."""
