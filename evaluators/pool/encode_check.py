"""Before the first trial: can the reference checkpoint's tokenizer encode every document the
study will score? A WordLevel or BPE vocabulary without its unk token raises on a character it
lacks, deep inside lm-eval, mid-study; here it is a SuiteError naming the checkpoint, the task
and the document (by index, never by its text: the text is the client's data).

Every selected document (search and validation) is encoded once, in batches: the fast
tokenizers do tens of thousands of short strings a second, and lm-eval caches nothing of it."""

from __future__ import annotations

import re

from evaluators.scoring.suite_scorer import SuiteError
from evaluators.security import render_memo

BATCH = 512
# Tokenizer errors that say what is wrong without quoting the input (tokenizers' model errors).
_PLAIN = re.compile(r"[A-Za-z]+ error: [A-Za-z\[\]<>_ ]{1,80}")


def _strings(task, doc) -> list[str]:
    """The texts lm-eval will encode for one document: its context, and per choice (multiple
    choice) or its target (log-likelihood) the context followed by the continuation."""
    context = task.doc_to_text(doc)
    context = context if isinstance(context, str) else ""
    kind = getattr(task, "OUTPUT_TYPE", None) or getattr(task.config, "output_type", "")
    delimiter = getattr(task.config, "target_delimiter", " ") or ""
    if kind == "multiple_choice":
        tails = [c for c in task.doc_to_choice(doc) if isinstance(c, str)]
    elif kind in ("loglikelihood", "loglikelihood_rolling"):
        target = task.doc_to_target(doc)
        tails = [target] if isinstance(target, str) else []
    else:  # generate_until: only the context is encoded
        tails = []
    return [context] + [context + delimiter + t for t in tails]


def _why(exc: Exception) -> str:
    text = str(exc).strip()
    return text if _PLAIN.fullmatch(text) else type(exc).__name__


def check_documents_encode(tokenizer, scorer, who: str) -> None:
    """SuiteError for the first document of ``scorer``'s suite that ``tokenizer`` cannot encode."""
    with render_memo.using(scorer.replay):  # renders replayed from the task box, never made here
        for r in scorer.requests:
            task = scorer.tasks[r.task]
            docs = task.eval_docs
            split = scorer.splits[r.task]
            numbers = sorted(set(split.indices("search")) | set(split.indices("validation")))
            for start in range(0, len(numbers), BATCH):
                chunk = numbers[start:start + BATCH]
                texts = [(n, s) for n in chunk for s in _strings(task, docs[n])]
                try:
                    tokenizer([s for _, s in texts], add_special_tokens=False)
                except Exception:  # find the document, then say why
                    for n, s in texts:
                        try:
                            tokenizer(s, add_special_tokens=False)
                        except Exception as exc:
                            raise SuiteError(
                                f"{who}: its tokenizer cannot encode document {n} of task '{r.task}' "
                                f"({_why(exc)}; a vocabulary without an unk token fails on any symbol it lacks: "
                                "add one, or use a tokenizer that covers the task's text)") from None
                    raise
