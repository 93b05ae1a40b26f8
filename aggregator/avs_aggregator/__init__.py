"""The aggregator service (``avs-aggregator``); no torch dependency."""
