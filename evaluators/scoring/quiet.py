"""Library chatter (per-call progress bars, 'not a str' notices) drowns a study's own progress
bar: a study calls lm-eval and transformers once per trial. Silence it once."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable


@functools.cache
def quiet_libraries() -> None:
    import datasets
    import transformers
    from tqdm import tqdm

    from evaluators.adapters import lm_eval as lm_eval_adapter

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # build_all_requests has no switch for its bar, and HFLM.loglikelihood_rolling (perplexity
    # tasks) calls _loglikelihood_tokens with disable_tqdm=False whatever its caller asked: the
    # module-level names are the only handles. disable is forced, not defaulted (a partial's
    # keyword would lose to the explicit disable=False).
    lm_eval_adapter.replace_progress_bars(_silent(tqdm))


def _silent(tqdm_cls: type) -> Callable[..., object]:
    def make(*args: object, **kwargs: object) -> object:
        kwargs["disable"] = True
        return tqdm_cls(*args, **kwargs)

    return make
