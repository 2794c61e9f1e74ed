"""One-click card-update links for emails: ``/u/<token>`` opens a fresh billing-portal session.

Portal sessions expire within minutes, so an email cannot carry one. It carries a token that
names a row of ``update_links`` by a random id (no customer or invoice id travels in the URL),
signed with a key from ``DUNNING_LINK_KEYS`` whose id is part of the token, so keys rotate
without breaking links already sent. The row knows the customer, the invoice the email was
about, when the link expires and whether ops revoked it.

- :mod:`worker.links.tokens`: signing and checking tokens (no database).
- :mod:`worker.links.models`: the ``update_links`` table.
- :mod:`worker.links.service`: issuing a link for an email, opening one, revoking a customer's.
- :mod:`worker.links.pages`: the pages a customer sees when a link cannot open the portal.
"""
