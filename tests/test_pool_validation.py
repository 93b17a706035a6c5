"""Pool validation: every user error is a PoolError naming the checkpoint (and the tensor).

Each test builds its own tiny pool in tmp_path (a base + 3 checkpoints of a 2-layer Llama, real
HF folders written by save_pretrained) and breaks one thing in it."""

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from evaluators.merging.resident import ResidentPool
from evaluators.pool.tokenizer_check import sentencepiece_pieces
from evaluators.pool.validation import PoolError, load_checkpoint_tensors, validate_pool

from tinypool import TOKENIZER_FORMATS, make_pool, spm_model, write_tokenizer

NORM = "model.norm.weight"
Q_PROJ = "model.layers.1.self_attn.q_proj.weight"


@pytest.fixture
def pool(tmp_path):
    return make_pool(tmp_path / "pool", n=3)


def ckpt(pool, i: int) -> Path:
    return pool["checkpoints"][i][1]


def rewrite(folder: Path, edit) -> None:
    """Load model.safetensors, let ``edit`` change the dict in place, save it back."""
    file = folder / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def header_of(file: Path) -> tuple[int, dict]:
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n])


def write_header(file: Path, header: dict) -> None:
    """Replace the JSON header in place (same length, space padded: data offsets unchanged)."""
    raw = bytearray(file.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n
    raw[8 : 8 + n] = text.ljust(n, b" ")
    file.write_bytes(bytes(raw))


def raises(pool, match_all: list[str], *, base=True) -> str:
    with pytest.raises(PoolError) as info:
        validate_pool(pool["checkpoints"], pool["base"] if base else None)
    msg = str(info.value)
    for part in match_all:
        assert part in msg, f"{part!r} not in {msg!r}"
    assert "\n" not in msg
    return msg


def test_valid_pool_passes(pool):
    info = validate_pool(pool["checkpoints"], pool["base"])
    assert info.names == ["ckpt0", "ckpt1", "ckpt2"]
    assert info.reference.name == "base"
    assert len(info.reference.tensors) == 21
    assert info.fingerprint()["dtypes"] == ["F32"]


# --- paths and folder contents -------------------------------------------------------------------


def test_path_does_not_exist(pool, tmp_path):
    pool["checkpoints"][1] = ("ckpt1", tmp_path / "nowhere")
    raises(pool, ["checkpoint 'ckpt1'", "nowhere", "path does not exist"])


def test_base_path_does_not_exist(pool, tmp_path):
    pool["base"] = tmp_path / "no-base"
    raises(pool, ["checkpoint 'base'", "no-base", "path does not exist"])


def test_path_is_a_file(pool):
    pool["checkpoints"][2] = ("ckpt2", ckpt(pool, 2) / "model.safetensors")
    raises(pool, ["checkpoint 'ckpt2'", "not a directory"])


def test_no_config_json(pool):
    (ckpt(pool, 1) / "config.json").unlink()
    raises(pool, ["checkpoint 'ckpt1'", "no config.json"])


def test_unreadable_config_json(pool):
    (ckpt(pool, 1) / "config.json").write_text("{not json")
    raises(pool, ["checkpoint 'ckpt1'", "unreadable config.json"])


def test_config_json_not_an_object(pool):
    (ckpt(pool, 1) / "config.json").write_text("[]")
    raises(pool, ["checkpoint 'ckpt1'", "config.json"])


def test_no_safetensors_files(pool):
    (ckpt(pool, 0) / "model.safetensors").unlink()
    raises(pool, ["checkpoint 'ckpt0'", "no .safetensors files"])


# --- corrupt and truncated files -----------------------------------------------------------------


def test_corrupt_header_huge_length(pool):
    file = ckpt(pool, 1) / "model.safetensors"
    raw = bytearray(file.read_bytes())
    raw[:8] = struct.pack("<Q", 2**62)
    file.write_bytes(bytes(raw))
    raises(pool, ["checkpoint 'ckpt1'", "model.safetensors", "corrupt safetensors header"])


def test_corrupt_header_length_past_end_of_file(pool):
    file = ckpt(pool, 1) / "model.safetensors"
    raw = bytearray(file.read_bytes())
    raw[:8] = struct.pack("<Q", len(raw))  # < MAX_HEADER_BYTES but 8 + n > size
    file.write_bytes(bytes(raw))
    raises(pool, ["checkpoint 'ckpt1'", "model.safetensors", "corrupt safetensors header"])


@pytest.mark.parametrize(
    "garbage",
    [b"{this is not json", b"\xff\xfe\x00garbage", b"[1, 2, 3]"],
    ids=["bad-json", "bad-utf8", "not-a-mapping"],
)
def test_corrupt_header_garbage_json(pool, garbage):
    file = ckpt(pool, 2) / "model.safetensors"
    raw = bytearray(file.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    raw[8 : 8 + n] = garbage.ljust(n, b" ")  # same length: only the JSON is broken
    file.write_bytes(bytes(raw))
    raises(pool, ["checkpoint 'ckpt2'", "model.safetensors"])


@pytest.mark.parametrize(
    "edit",
    [
        lambda e: e.pop("dtype"),
        lambda e: e.pop("data_offsets"),
        lambda e: e.update(data_offsets=[0]),
        lambda e: e.update(data_offsets=[None, None]),  # was a bare TypeError before the fix
        lambda e: e.update(shape="x"),
    ],
    ids=["no-dtype", "no-offsets", "one-offset", "null-offsets", "bad-shape"],
)
def test_corrupt_header_entry(pool, edit):
    """Valid JSON with a malformed tensor entry: the message names the tensor."""
    file = ckpt(pool, 2) / "model.safetensors"
    _, header = header_of(file)
    edit(header[NORM])
    write_header(file, header)
    raises(pool, ["checkpoint 'ckpt2'", "model.safetensors", f"tensor '{NORM}'"])


def test_truncated_file(pool):
    file = ckpt(pool, 1) / "model.safetensors"
    raw = file.read_bytes()
    n, header = header_of(file)
    cut = 200
    file.write_bytes(raw[:-cut])
    data_len = len(raw) - cut - 8 - n
    beyond = {k for k, v in header.items() if k != "__metadata__" and v["data_offsets"][1] > data_len}
    assert beyond  # the cut really loses tensor data
    msg = raises(pool, ["checkpoint 'ckpt1'", "model.safetensors", "truncated"])
    assert any(f"tensor '{k}'" in msg for k in beyond), msg


def test_truncated_to_a_few_bytes(pool):
    file = ckpt(pool, 0) / "model.safetensors"
    file.write_bytes(file.read_bytes()[:5])
    raises(pool, ["checkpoint 'ckpt0'", "model.safetensors", "too short"])


def test_corrupt_tensor_data_is_caught_at_load(pool):
    """Offsets that disagree with shape x dtype pass the header check (they stay inside the
    file), but loading is still a PoolError naming the checkpoint and the file."""
    file = ckpt(pool, 1) / "model.safetensors"
    _, header = header_of(file)
    start, _ = header[NORM]["data_offsets"]
    header[NORM]["data_offsets"] = [start, start + 64]  # 32 floats need 128 bytes
    write_header(file, header)
    info = validate_pool(pool["checkpoints"], pool["base"])
    with pytest.raises(PoolError, match="checkpoint 'ckpt1': cannot load model.safetensors"):
        load_checkpoint_tensors(info.checkpoints[1], [NORM])


# --- layout mismatches ---------------------------------------------------------------------------


def test_different_shape(pool):
    rewrite(ckpt(pool, 2), lambda t: t.update({Q_PROJ: t[Q_PROJ][:16].clone()}))
    raises(pool, ["checkpoint 'ckpt2'", f"tensor '{Q_PROJ}'", "[16, 32]", "'base' has [32, 32]"])


def test_different_shape_without_base(pool):
    rewrite(ckpt(pool, 1), lambda t: t.update({NORM: torch.ones(33)}))
    raises(pool, ["checkpoint 'ckpt1'", f"tensor '{NORM}'", "[33]", "'ckpt0' has [32]"], base=False)


def test_missing_tensor(pool):
    rewrite(ckpt(pool, 1), lambda t: t.pop(NORM))
    raises(pool, ["checkpoint 'ckpt1'", f"missing tensor '{NORM}'"])


def test_missing_tensor_in_base(pool):
    """The base is the reference: a tensor only the checkpoints have is 'unexpected'."""
    rewrite(pool["base"], lambda t: t.pop(NORM))
    raises(pool, ["checkpoint 'ckpt0'", f"unexpected tensor '{NORM}'"])


def test_extra_tensor(pool):
    rewrite(ckpt(pool, 2), lambda t: t.update({"model.extra.weight": torch.zeros(4)}))
    raises(pool, ["checkpoint 'ckpt2'", "unexpected tensor 'model.extra.weight'"])


def test_different_dtype_whole_checkpoint(pool):
    def to_bf16(t):
        for k in t:
            t[k] = t[k].to(torch.bfloat16)

    rewrite(ckpt(pool, 1), to_bf16)
    msg = raises(pool, ["checkpoint 'ckpt1'", "dtype BF16", "'base' has F32"])
    _, header = header_of(pool["base"] / "model.safetensors")
    first = next(k for k in header if k != "__metadata__")
    assert f"tensor '{first}'" in msg


def test_different_dtype_one_tensor(pool):
    rewrite(ckpt(pool, 0), lambda t: t.update({NORM: t[NORM].to(torch.bfloat16)}))
    raises(pool, ["checkpoint 'ckpt0'", f"tensor '{NORM}' has dtype BF16", "'base' has F32"])


def test_bf16_pool_is_valid(tmp_path):
    """dtype is only an error when it differs: an all-bf16 pool validates and loads."""
    p = make_pool(tmp_path / "bf16", n=2, dtype=torch.bfloat16)
    info = validate_pool(p["checkpoints"], p["base"])
    assert info.fingerprint()["dtypes"] == ["BF16"]
    resident = ResidentPool(info, torch.device("cpu"))
    assert resident.stacks[NORM].dtype == torch.bfloat16


@pytest.mark.parametrize("field", ["model_type", "architectures"])
def test_different_architecture(pool, field):
    cfg_file = ckpt(pool, 2) / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg[field] = "mistral" if field == "model_type" else ["MistralForCausalLM"]
    cfg_file.write_text(json.dumps(cfg))
    shown = "'mistral'" if field == "model_type" else "'MistralForCausalLM'"
    raises(pool, ["checkpoint 'ckpt2'", "architecture", shown, "differs from 'base'"])


# --- names ---------------------------------------------------------------------------------------


def test_duplicate_checkpoint_names(pool):
    pool["checkpoints"][2] = ("ckpt0", ckpt(pool, 2))
    raises(pool, ["checkpoint name 'ckpt0' is used twice"])


def test_empty_pool(pool):
    with pytest.raises(PoolError, match="the pool is empty"):
        validate_pool([], pool["base"])


# --- values (checked while loading) --------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_values(pool, bad):
    def poison(t):
        t[Q_PROJ][3, 5] = bad

    rewrite(ckpt(pool, 1), poison)
    info = validate_pool(pool["checkpoints"], pool["base"])  # headers are fine
    expected = f"checkpoint 'ckpt1': tensor '{Q_PROJ}' contains NaN or Inf values"
    with pytest.raises(PoolError, match="^" + expected.replace("[", r"\[") + "$"):
        load_checkpoint_tensors(info.checkpoints[1], sorted(info.reference.tensors))
    with pytest.raises(PoolError) as err:
        ResidentPool(info, torch.device("cpu"))
    assert str(err.value) == expected
    # The other checkpoints load fine.
    load_checkpoint_tensors(info.checkpoints[0], sorted(info.reference.tensors))


def test_non_finite_values_in_base(pool):
    rewrite(pool["base"], lambda t: t[NORM].fill_(float("nan")))
    info = validate_pool(pool["checkpoints"], pool["base"])
    with pytest.raises(PoolError, match=f"checkpoint 'base': tensor '{NORM}' contains NaN"):
        ResidentPool(info, torch.device("cpu"))


def test_non_finite_bf16(tmp_path):
    p = make_pool(tmp_path / "bf16", n=2, dtype=torch.bfloat16)
    rewrite(p["checkpoints"][0][1], lambda t: t[NORM].__setitem__(0, float("inf")))
    info = validate_pool(p["checkpoints"], p["base"])
    with pytest.raises(PoolError, match=f"checkpoint 'ckpt0': tensor '{NORM}' contains NaN or Inf"):
        ResidentPool(info, torch.device("cpu"))


# --- sharded checkpoints -------------------------------------------------------------------------


def shard(folder: Path) -> list[str]:
    """Split model.safetensors into two shards + model.safetensors.index.json (HF layout)."""
    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, part in enumerate(halves, 1):
        fname = f"model-{i:05d}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, str(folder / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (folder / "model.safetensors").unlink()
    return sorted(set(weight_map.values()))


def test_sharded_checkpoint_validates_and_loads_the_same(pool):
    names_before = sorted(load_file(ckpt(pool, 1) / "model.safetensors"))
    plain = validate_pool(pool["checkpoints"], pool["base"])
    plain_tensors = load_checkpoint_tensors(plain.checkpoints[1], names_before)

    files = shard(ckpt(pool, 1))
    sharded = validate_pool(pool["checkpoints"], pool["base"])
    info = sharded.checkpoints[1]
    assert {t.file.name for t in info.tensors.values()} == set(files)
    assert {k: (v.dtype, v.shape) for k, v in info.tensors.items()} == {
        k: (v.dtype, v.shape) for k, v in plain.checkpoints[1].tensors.items()
    }
    assert sharded.fingerprint() == plain.fingerprint()
    for a, b in zip(load_checkpoint_tensors(info, names_before), plain_tensors, strict=True):
        assert torch.equal(a, b)
    stacks = ResidentPool(sharded, torch.device("cpu")).stacks
    for name, t in zip(names_before, plain_tensors, strict=True):
        assert torch.equal(stacks[name][1], t)


def test_sharded_base_validates(pool):
    shard(pool["base"])
    info = validate_pool(pool["checkpoints"], pool["base"])
    assert len({t.file for t in info.reference.tensors.values()}) == 2
    ResidentPool(info, torch.device("cpu")).deltas()


def test_sharded_index_names_a_missing_shard(pool):
    files = shard(ckpt(pool, 2))
    (ckpt(pool, 2) / files[1]).unlink()
    raises(pool, ["checkpoint 'ckpt2'", f"shard {files[1]}", "does not exist"])


def test_sharded_index_unreadable(pool):
    shard(ckpt(pool, 2))
    (ckpt(pool, 2) / "model.safetensors.index.json").write_text('{"no_weight_map": {}}')
    raises(pool, ["checkpoint 'ckpt2'", "model.safetensors.index.json"])


# --- every model parameter comes from the pool (issue 12, item 6) -------------------------------

LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"


def drop_everywhere(pool, name: str) -> None:
    for folder in (pool["base"], *(p for _, p in pool["checkpoints"])):
        rewrite(folder, lambda t: t.pop(name))


def edit_config(pool, **changes) -> None:
    for folder in (pool["base"], *(p for _, p in pool["checkpoints"])):
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, **changes}))


def test_untied_lm_head_missing_from_every_file_is_refused(pool):
    drop_everywhere(pool, "lm_head.weight")
    msg = raises(pool, ["'lm_head.weight'", "random initialization", "tie_word_embeddings: false"])
    assert msg.startswith("checkpoint 'base'")
    raises(pool, ["checkpoint 'ckpt0'", "'lm_head.weight'"], base=False)


def test_missing_layer_parameter_is_refused(pool):
    drop_everywhere(pool, NORM)
    raises(pool, [f"'{NORM}'", "random initialization"])


def test_tied_model_needs_no_lm_head(pool):
    drop_everywhere(pool, "lm_head.weight")
    edit_config(pool, tie_word_embeddings=True)
    validate_pool(pool["checkpoints"], pool["base"])


def test_missing_parameter_is_one_error_line_from_the_cli(pool, tmp_path, capsys):
    from service.cli.main import main

    drop_everywhere(pool, "lm_head.weight")
    cfg = tmp_path / "merge.yml"
    cfg.write_text("merge_method: linear\nmodels:\n" + "".join(
        f"  - model: {p}\n    parameters: {{weight: 0.5}}\n" for _, p in pool["checkpoints"]))
    assert main(["merge", str(cfg), str(tmp_path / "out"), "-q", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "'lm_head.weight'" in err[0], err
    assert not (tmp_path / "out").exists()


def test_missing_parameter_is_a_4xx_at_pool_registration(pool, tmp_path):
    from fastapi.testclient import TestClient
    from servicekit import AUTH, settings_for

    from service.api.app import create_app

    drop_everywhere(pool, "lm_head.weight")
    body = {"name": "p", "base": str(pool["base"]),
            "checkpoints": [{"name": n, "path": str(p)} for n, p in pool["checkpoints"]]}
    with TestClient(create_app(settings_for(tmp_path, f"sqlite:///{tmp_path}/api.db"))) as c:
        r = c.post("/v1/pools", json=body, headers=AUTH)
    assert r.status_code == 422 and "'lm_head.weight'" in r.json()["detail"], r.text


def test_model_load_refuses_randomly_initialized_parameters(pool, monkeypatch):
    """Where the config alone cannot build the model, loading it says the same."""
    import evaluators.pool.validation as pool_module
    from evaluators.merging.resident import ResidentModel

    drop_everywhere(pool, "lm_head.weight")
    monkeypatch.setattr(pool_module, "_model_parameters", lambda config: None)
    info = validate_pool(pool["checkpoints"], pool["base"])
    with pytest.raises(PoolError, match="'lm_head.weight'.*random initialization"):
        ResidentModel(ResidentPool(info, torch.device("cpu")))


# --- tokenizers compared whatever their format (issue 12, item 7) -------------------------------

TOKENS = ["<unk>", "<s>", "</s>", *"abcdefgh"]


def members(pool) -> list[Path]:
    return [pool["base"], *(p for _, p in pool["checkpoints"])]


@pytest.mark.parametrize("fmt", TOKENIZER_FORMATS)
def test_same_vocabulary_in_any_format_is_valid(pool, fmt):
    for folder in members(pool):
        write_tokenizer(folder, fmt, TOKENS)
    validate_pool(pool["checkpoints"], pool["base"])


@pytest.mark.parametrize("fmt", TOKENIZER_FORMATS)
def test_different_vocabulary_in_any_format_is_refused(pool, fmt):
    swapped = [TOKENS[0], TOKENS[2], TOKENS[1], *TOKENS[3:]]
    for folder in members(pool):
        write_tokenizer(folder, fmt, swapped if folder == ckpt(pool, 1) else TOKENS)
    raises(pool, ["checkpoint 'ckpt1'", "tokenizer vocabulary differs", "its token with id 1 has id 2"])  # ids, never the file's text


@pytest.mark.parametrize("fmt", TOKENIZER_FORMATS)
def test_differing_checkpoints_are_refused_when_the_base_has_no_tokenizer_json(pool, fmt):
    """The issue's case: the check ran only when the base had tokenizer.json."""
    write_tokenizer(pool["base"], fmt, TOKENS)
    write_tokenizer(ckpt(pool, 0), "tokenizer.json", TOKENS)
    write_tokenizer(ckpt(pool, 1), "tokenizer.json", TOKENS[:-1] + ["z"])
    write_tokenizer(ckpt(pool, 2), fmt, TOKENS)
    raises(pool, ["checkpoint 'ckpt1'", "tokenizer vocabulary differs", "lacks the token with id 10"])


def test_same_vocabulary_across_formats_is_valid(pool):
    for folder, fmt in zip(members(pool), TOKENIZER_FORMATS, strict=True):
        write_tokenizer(folder, fmt, TOKENS)
    validate_pool(pool["checkpoints"], pool["base"])


@pytest.mark.parametrize("who", ["base", "ckpt2"])
def test_member_without_tokenizer_files_is_refused(pool, who):
    folder = pool["base"] if who == "base" else ckpt(pool, 2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    raises(pool, [f"checkpoint '{who}'", "no tokenizer files", "cannot be checked"])


def test_no_member_with_tokenizer_files_is_valid(pool):
    for folder in members(pool):
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).unlink()
    validate_pool(pool["checkpoints"], pool["base"])


def test_added_tokens_are_compared(pool):
    for folder in members(pool):
        write_tokenizer(folder, "vocab.txt", TOKENS)
    (ckpt(pool, 0) / "added_tokens.json").write_text(json.dumps({"<pad>": len(TOKENS)}))
    raises(pool, ["checkpoint 'ckpt0'", "tokenizer vocabulary differs", "its token with id 11 is not in"])


@pytest.mark.parametrize(("fmt", "name", "garbage"), [
    ("tokenizer.json", "tokenizer.json", b"{"),
    ("tokenizer.json", "tokenizer.json", b'{"model": {"type": "BPE"}}'),
    ("tokenizer.model", "tokenizer.model", b"\x0a\xff\xff\xff"),
    ("tokenizer.model", "tokenizer.model", b"not a model"),
    ("vocab.json+merges.txt", "vocab.json", b"[1, 2]"),
    ("vocab.txt", "vocab.txt", b"\xff\xfe\x00"),
], ids=["json-syntax", "json-no-vocab", "spm-truncated", "spm-garbage", "vocab-json-list", "vocab-txt-binary"])
@pytest.mark.parametrize("where", ["base", "ckpt1"])
def test_unreadable_tokenizer_is_a_pool_error(pool, fmt, name, garbage, where):
    """Also in the reference, whose files every other member may share byte for byte."""
    for folder in members(pool):
        write_tokenizer(folder, fmt, TOKENS)
    for folder in (members(pool) if where == "base" else [ckpt(pool, 1)]):
        (folder / name).write_bytes(garbage)
    raises(pool, [f"checkpoint '{where}'", f"unreadable {name}"])


def test_sentencepiece_reader_agrees_with_sentencepiece(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    import io

    model = io.BytesIO()
    text = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs"] * 20
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model, vocab_size=40,
                                   model_type="bpe", minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    assert sentencepiece_pieces(model.getvalue()) == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert sentencepiece_pieces(spm_model(TOKENS)) == TOKENS
