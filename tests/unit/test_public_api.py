"""The public surface is a contract: changing it must be a deliberate act."""

from __future__ import annotations

import enso_tracker
import enso_tracker.testing

EXPECTED = {
    # The sender= seam: its protocol and the outcome types a sender returns.
    "Answered",
    "BatchAnswer",
    "FailedRecord",
    "Outcome",
    "Rejected",
    "Retry",
    "Sender",
    "TooLarge",
    "Unauthorized",
    # The durable spool: a directory seen without a tracker, and what it keeps.
    "DeadLetter",
    "Spool",
    "SpoolStatus",
    # Receipts: what a tracker settled, read back (docs/receipts.md).
    "EventReceipt",
    "ReceiptTotal",
    "Receipts",
    "DEFAULT_BASE_URL",
    "Config",
    "ConfigurationError",
    "DropKind",
    "DropReason",
    "EnsoError",
    "Event",
    "InvalidEventError",
    "InvalidEventTypeError",
    "NotInitializedError",
    "OnDrop",
    "Stats",
    "Tracker",
    "__version__",
    # Sending a few events now, without a tracker (scripts, the CLI's send).
    "SendResult",
    "send",
    "send_events",
    "flush",
    "get_tracker",
    "init",
    "shutdown",
    "stats",
    "track",
}


def test_all_is_the_documented_surface() -> None:
    assert set(enso_tracker.__all__) == EXPECTED
    for name in enso_tracker.__all__:
        assert hasattr(enso_tracker, name), name


def test_public_names_are_listed() -> None:
    public = {n for n in vars(enso_tracker) if not n.startswith("_")}
    # Subpackages: the test helpers, and the framework integrations (imported by Tracker).
    # Backfill modules (dask, spark) and enso_tracker.otel: present once some code
    # imported them.
    assert public <= EXPECTED | {"testing", "integrations", "dask", "spark", "otel"}


def test_testing_module_exports() -> None:
    assert {"DropRecorder", "FakeEnso", "Fault", "RecordedRequest"} <= set(
        enso_tracker.testing.__all__
    )


def test_backfill_modules_export_one_surface() -> None:
    import enso_tracker.dask
    import enso_tracker.spark

    common = {"Columns", "PartitionNotDelivered", "backfill", "deliver_partition", "with_event_ids"}
    assert set(enso_tracker.spark.__all__) == common
    assert set(enso_tracker.dask.__all__) == common | {"deliver_partitions"}
    assert enso_tracker.dask.Columns is enso_tracker.spark.Columns
    assert issubclass(enso_tracker.dask.PartitionNotDelivered, RuntimeError)


def test_exceptions_are_value_or_type_errors() -> None:
    assert issubclass(enso_tracker.InvalidEventError, ValueError)
    assert issubclass(enso_tracker.InvalidEventTypeError, TypeError)
    assert issubclass(enso_tracker.InvalidEventTypeError, enso_tracker.InvalidEventError)
    assert issubclass(enso_tracker.ConfigurationError, ValueError)
    for exc in (enso_tracker.ConfigurationError, enso_tracker.NotInitializedError):
        assert issubclass(exc, enso_tracker.EnsoError)
