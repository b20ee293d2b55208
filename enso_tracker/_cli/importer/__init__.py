"""``enso-tracker import``'s machinery, below the command (``commands/import_.py``).

* ``rows``: inputs (JSONL or CSV, gzipped or not, stdin) read in bounded blocks, and the
  0.x line-based eventId.
* ``mapping``: a row's fields to ``track()``'s arguments; numbers written as text.
* ``timestamps``: ``--timestamp-format`` / ``--timezone``, and the repeat cache.
* ``engine``: ``Importer``, one run: the fast path, the general path, the books.
* ``books``: what the run counts and reports (invalid rows by reason, drops, exit code).
* ``checks``: everything refused before anything is sent (usage errors, exit 2).
* ``preflight``: can Enso be reached with these credentials (exit 3 before reading).
* ``errors_out``: the errors file. ``progress``: the progress display.
  ``receipts``: the run's own receipts. ``summary``: the human summary.

Invariants: every row read is counted once (delivered, invalid, refused or in another
shard); derived eventIds follow ``enso_tracker._backfill``'s rule byte for byte.
"""
