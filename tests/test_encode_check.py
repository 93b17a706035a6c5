"""A tokenizer that cannot encode a document (a WordLevel vocabulary without its unk token) ends
`mergeopt run` with one error line naming the checkpoint, the task and the document, before any
trial and before the pool's weights are loaded."""

from pathlib import Path

import yaml
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from service.cli.main import main

from tinypool import CHARS, SPECIALS, make_pool, make_tasks


def without_unk(missing: str) -> PreTrainedTokenizerFast:
    """The tests' character tokenizer, less one character and its unk token."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS[:3] + [c for c in CHARS if c != missing])}
    tok = Tokenizer(models.WordLevel(vocab=vocab))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def test_a_document_the_tokenizer_cannot_encode_is_one_error_line(tmp_path, capsys, monkeypatch):
    pool = make_pool(tmp_path / "pool", n=2)
    include, tasks = make_tasks(tmp_path, n_docs=12)
    (include / "tiny_sub.yaml").write_text((include / "tiny_sub.yaml").read_text().replace("{{q}}", "{{q}}?"))
    tok = without_unk("?")  # only tiny_sub's documents (now 'a-b=?') hold a '?'
    for folder in [pool["base"], *(p for _, p in pool["checkpoints"])]:
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (Path(folder) / f).unlink(missing_ok=True)
        tok.save_pretrained(folder)
    spec = {"name": "tok", "pool": {"base": str(pool["base"]),
                                    "checkpoints": [{"name": n, "path": str(p)} for n, p in pool["checkpoints"]]},
            "suite": {"include_path": str(include), "tasks": [{"task": tasks[0]}, {"task": tasks[1], "split": "held_out"}]},
            "search": {"n_trials": 6}, "storage": f"sqlite:///{tmp_path}/tok.db", "device": "cpu"}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capsys.readouterr()  # the pool's build output
    assert main(["run", str(tmp_path / "study.yaml"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "checkpoint 'base': its tokenizer cannot encode document 0 of task 'tiny_sub'" in err
    assert "Missing [UNK] token" in err
