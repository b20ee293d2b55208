"""The durable spool: every module that touches a spool directory (``Config.spool_dir``).

Design constraints (what must never break):

* ``track()`` never touches the disk. The spooler and the sender thread do, with the
  ledger's lock released, one at a time (``DiskSpool.lock``).
* A batch is committed as one row before any of its events is sent. (Only when the
  disk fails are they sent from memory, counted as not durable: ``durable_seq``.)
* A row is deleted only when every event in it is settled: delivered, or dropped for
  good. Dead letters are stored before the rows they came from are deleted: a crash
  between the two resends (Enso dedups by eventId), never loses.
* One file per process. Its owner holds ``flock`` on the db itself for the file's
  life, so a live owner's file is never taken; a file is adopted only once its flock
  can be taken, and removed (drained) while it is still held.
* Nothing is sent that cannot be attributed to this tracker's destination and
  credential: only files (and salvaged rows, and redriven dead letters) stamped with
  its identity are adopted; the rest is left as it is, counted and reported.
* Only real damage (SQLite's corrupt/not-a-database codes, a failed ``quick_check``)
  sets a file aside; a file that cannot be opened *now* is left and tried again.
* A full spool always drains: deletes work past the page limit (``max_page_count``).
* A spool directory is a trust boundary: never followed through a symlink, never on a
  network filesystem, everything created 0600, another user's file never written.
* A forked child never closes, writes or deletes its parent's files.
* Without a spool, nothing in this package runs.

The stage in the pipeline::

    track() → queue → [spooler: encode, one row per batch → disk] → staged → send
                                                   ↘ backlog (on disk only) ↗

Modules, by role (after Vector's ``disk_v2``):

========================  ==========================================================
``spooler``               ``Spooler``: the stage's thread rounds (write, commit)
``backlog``               its rounds that read from disk (adopt, load, lose a file)
``books``                 ``SpoolBooks``: the spool's part of the ledger's books
``disk``                  ``DiskSpool``: the spool's files as the stage sees them (write,
                          load, release rows, close)
``adoption``              taking over the files of processes that are gone
``files``                 ``SpoolFile`` (one database held open), ``StoredBatch``
``format``                the file format and the four ways a file is opened
``directory``             the directory: checks, names, orphans, cleanup, quarantine
``sqlite``                the one way to open, write (``transaction``), stamp and
                          read the format of a database; its side files; errors
``budget``                how large our file may grow, every bound together
``dead_letters``          ``dead-letters.db``: what will never be delivered
``admin``                 the public ``Spool(path)``: the directory seen from outside
``identity``, ``trust``   whom a file was written for; what may be opened, and the
                          one lock probe (``try_flock``)
``errors``                the exceptions callers tell apart
========================  ==========================================================

Import the modules themselves (``from ._spool.disk import DiskSpool``): this package
re-exports nothing, so importing one small module (``identity``, ``trust``) never
loads the rest (``disk`` imports ``_receipts``, which imports those two).
"""
