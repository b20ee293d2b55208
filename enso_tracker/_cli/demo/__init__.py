"""``enso-tracker demo``'s two shows, run against an embedded fake Enso.

* ``live``: threads playing request handlers track into a misbehaving fake; the books
  must balance (every accepted event on the server once, or reported as dropped).
* ``crash``: an app spooling to disk is ``kill -9``ed; a new process delivers what it
  had committed (run as ``python -m enso_tracker._cli.demo.crash URL DIR`` for the app).

Imported only by the ``demo`` command (they import the fake server).
"""
