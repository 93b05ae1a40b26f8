"""``avs-challenger``: the watcher that re-checks certified batches and escalates wrong leaves."""
