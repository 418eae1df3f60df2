"""Talking to the host site over HTTP: request signing and the bounded treq client
shared by the HTTP directory (:mod:`nextim_twisted.directory.http`) and the webhooks
(:mod:`nextim_twisted.webhooks`) (docs/design.md#d22-the-site-as-source-of-truth)."""
