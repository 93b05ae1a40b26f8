"""Monitoring: the chain exporter, Prometheus target files, a Prometheus process helper, dashboards.

The deployable configuration lives in ``deploy/prometheus`` and ``deploy/grafana``; see
``docs/monitoring.md``.
"""
