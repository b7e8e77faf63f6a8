"""Monitoring of served models (issue 10; docs/monitoring.md).

Payload logging: ``cloudevents.py`` (KServe's binary-mode CloudEvents for inference requests and
responses), ``spool.py`` (a durable on-disk FIFO with a size cap and counted drops), ``logger.py``
(``PayloadLogger``: queue -> spool -> HTTP or JSONL sink with retries and backoff;
``PayloadLoggers``: the gateway's loggers per service and url). Analysis of logged traffic:
``receiver.py`` and ``detectors/`` (drift, outliers, bias as CloudEvents receivers).
"""
