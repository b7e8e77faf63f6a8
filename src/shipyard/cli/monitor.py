"""``shipyard monitor serve``: run a drift, outlier, bias or custom detector as a CloudEvents receiver.

Point a payload logger (``logger: {url: ...}`` in an InferenceService) at the URL it prints; the
detector's scores are on ``/metrics`` and labels for the bias detector go to ``/feedback``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from shipyard.cli.errors import fail

app = typer.Typer(
    help="Analyse logged inference traffic: drift, outlier and bias detectors as CloudEvents receivers.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command()
def serve(
    config: Optional[Path] = typer.Option(None, "--config", "-c", show_default=False,
                                          help="A detector folder (detector.yaml + reference); the options below "
                                          "override its settings."),
    detector: Optional[str] = typer.Option(None, "--detector", "-d", show_default=False,
                                           help="drift, outlier, bias, or a custom detector as package.module:Class."),
    reference: Optional[Path] = typer.Option(None, "--reference", "-r", show_default=False,
                                             help="The reference sample: .csv, .parquet or .npy (columns are the "
                                             "features)."),
    name: Optional[str] = typer.Option(None, "--name", "-n", show_default=False,
                                       help="Model name of its /v2/models/NAME routes (default: the folder's name, "
                                       "or the detector's)."),
    state: Optional[Path] = typer.Option(None, "--state", show_default=False,
                                         help="Save the window, counters and feedback here and load them at start "
                                         "(with --config: default $SHIPYARD_HOME/monitor/NAME/state.json)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8480, "--port", "-p", help="Port to listen on (0: any free port)."),
    alert_url: Optional[str] = typer.Option(None, "--alert-url", show_default=False,
                                            help="POST an org.shipyard.monitor.alert CloudEvent here on each alert."),
    window: Optional[int] = typer.Option(None, "--window", "-w", show_default=False,
                                         help="Rows in the sliding window (drift/outlier 200, bias 1000)."),
    min_rows: Optional[int] = typer.Option(None, "--min-rows", show_default=False,
                                           help="Rows needed before scoring (drift/outlier: min(window, 50); "
                                           "bias: per group, 20)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", show_default=False,
                                          help="Drift: significance level of the corrected p-values (0.05)."),
    correction: Optional[str] = typer.Option(None, "--correction", show_default=False,
                                             help="Drift: bonferroni (default) or bh (Benjamini-Hochberg)."),
    categorical: Optional[list[str]] = typer.Option(None, "--categorical", show_default=False,
                                                    help="Drift: treat this numeric column as categorical "
                                                    "(repeatable)."),
    method: Optional[str] = typer.Option(None, "--method", show_default=False,
                                         help="Outlier: isolation_forest (default) or mahalanobis."),
    threshold: Optional[float] = typer.Option(None, "--threshold", show_default=False,
                                              help="Alert threshold: outlier rate (outlier, 0.05) or the parity / "
                                              "opportunity difference (bias, 0.1)."),
    percentile: Optional[float] = typer.Option(None, "--percentile", show_default=False,
                                               help="Outlier: an instance is an outlier above this percentile of "
                                               "the reference's scores (99)."),
    protected: Optional[str] = typer.Option(None, "--protected", show_default=False,
                                            help="Bias: the protected attribute's column."),
    positive_label: Optional[str] = typer.Option(None, "--positive-label", show_default=False,
                                                 help="Bias: the positive prediction / label (1)."),
    label_column: Optional[str] = typer.Option(None, "--label-column", show_default=False,
                                               help="A label column of the reference file, dropped before fitting."),
) -> None:
    """Serve a detector: POST CloudEvents to /, scrape /metrics, send labels to /feedback, score rows at
    /v2/models/NAME/infer."""
    from shipyard.monitor.receiver import build, run

    options = dict(window=window, min_rows=min_rows, alpha=alpha, correction=correction,
                   categorical=categorical or None, method=method, threshold=threshold, percentile=percentile,
                   protected=protected, positive_label=_label(positive_label))
    if config is not None:
        if detector is not None or reference is not None or label_column is not None:
            fail("--config FOLDER has the detector, its reference and label column in detector.yaml; leave out "
                 "--detector, --reference and --label-column", code=2)
        serve_folder_command(config, name=name, host=host, port=port, state=state,
                             overrides={**options, "alert_url": alert_url})
        return
    if detector is None or reference is None:
        fail("give --detector and --reference, or --config FOLDER (a folder with detector.yaml)", code=2)
    try:
        receiver = build(detector, reference, alert_url=alert_url, label_column=label_column, name=name,
                         state_path=state, **options)
    except (ValueError, TypeError, OSError) as exc:
        fail(str(exc))
    import asyncio
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run(receiver, host, port))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc} (choose another --port)")


def serve_folder_command(folder: Path, *, name: str | None = None, host: str = "127.0.0.1", port: int = 8080,
                         state: Path | None = None, overrides: dict[str, object] | None = None) -> None:
    """Serve a detector folder, reporting a bad folder or a taken port as CLI errors (``shipyard serve FOLDER``
    and ``shipyard monitor serve --config FOLDER``)."""
    import logging

    from shipyard.cli.errors import warn
    from shipyard.monitor.detector_folder import DetectorConfigError, serve_folder

    if not 0 <= port <= 65535:
        fail(f"the port must be between 0 and 65535, got {port}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve_folder(folder, name=name, host=host, port=port, state_path=state, overrides=overrides, warn=warn)
    except DetectorConfigError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc} (choose another port)")


def _label(value: str | None) -> object:
    """--positive-label as a number when it reads as one."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() else number


@app.callback()
def _main() -> None:
    """Detectors of logged traffic."""


if __name__ == "__main__":
    app()
