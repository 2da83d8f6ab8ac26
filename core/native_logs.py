"""Keep TensorFlow's and LiteRT's native start-up log lines off a user's terminal.

TensorFlow writes C++ log lines while it is imported and when it first looks for
devices ("oneDNN custom operations are on", "failed call to cuInit", ...), before absl
logging is initialised, so TF_CPP_MIN_LOG_LEVEL does not hold them back; LiteRT prints
"Created TensorFlow Lite XNNPACK delegate" for each interpreter. They read like errors to
a user. `quiet_native_startup()` does TensorFlow's start-up with the process's standard
error (file descriptor 2) pointed at /dev/null, and turns on `quiet_native_stderr()` for
later native start-up work such as creating interpreters. The CLI calls it unless
`-v` is given. Python exceptions are unaffected: they are raised, not printed, inside.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

_quiet = False


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Within the block, native code's writes to standard error are dropped (only after
    `quiet_native_startup()` turned quieting on; otherwise a no-op)."""
    if not _quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_native_startup() -> None:
    """Import TensorFlow and let it find its devices without its native start-up lines;
    from then on `quiet_native_stderr()` is active."""
    global _quiet
    _quiet = True
    with quiet_native_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()
