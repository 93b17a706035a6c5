"""Library chatter (per-call progress bars, 'not a str' notices) drowns a study's own progress
bar: a study calls lm-eval and transformers once per trial. Silence it once."""

from __future__ import annotations

import functools
import logging


@functools.cache
def quiet_libraries() -> None:
    import datasets
    import lm_eval.api.task as task_module
    import transformers
    from tqdm import tqdm

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # build_all_requests has no switch for its bar; the module-level name is the only handle.
    task_module.tqdm = functools.partial(tqdm, disable=True)
