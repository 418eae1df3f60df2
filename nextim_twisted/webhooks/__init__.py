"""Signed webhooks to the host site through a database outbox
(docs/integration.md#webhooks): :mod:`.outbox` the table, :mod:`.worker` the
service that fills and delivers it."""
