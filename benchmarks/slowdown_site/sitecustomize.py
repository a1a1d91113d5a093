"""An injected slowdown for a benchmark's `pusa-batch run` subprocess (B1's run side).

The command line takes no custom runner, so B1 slows its run side from outside: it puts this
folder first on PYTHONPATH and sets PUSA_BENCH_ITEM_DELAY_S. Every Python process of that run
(the driver and Ray's workers, which inherit the environment) imports this file at start-up; it
does nothing unless the variable is set, and then makes `PipelineRunner.finish` sleep that many
seconds more once `pusa_batch.engine.runner` is imported (a lazy hook: nothing is imported here).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import time

DELAY_ENV = "PUSA_BENCH_ITEM_DELAY_S"
TARGET = "pusa_batch.engine.runner"


def _slow_finish(module) -> None:
    runner = module.PipelineRunner
    finish = runner.finish
    delay = float(os.environ[DELAY_ENV])

    def slowed(self, item, latents):
        time.sleep(delay)
        return finish(self, item, latents)

    runner.finish = slowed


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; once asked for TARGET, wraps its loader to patch it when loaded."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_then_patch(module):
            exec_module(module)
            _slow_finish(module)

        spec.loader.exec_module = exec_then_patch
        return spec


if float(os.environ.get(DELAY_ENV) or 0) > 0:
    sys.meta_path.insert(0, _AfterImport())
