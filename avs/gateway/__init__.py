"""The OpenAI-compatible gateway (``avs-gateway``): a thin HTTP service in front of the aggregator.

``openai_api`` maps OpenAI request bodies to AVS requests and AVS statuses to OpenAI responses
(pure), ``service`` runs them against the aggregator's intake API (``Intake``, a Protocol the
``avs.client.AggregatorClient`` satisfies), ``server`` is the HTTP layer, ``errors`` the one
mapping from errors to OpenAI's error JSON. See docs/gateway.md.
"""
