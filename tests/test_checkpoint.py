"""s2s.checkpoint on small files made here, without training: what a checkpoint stores
(`metadata`), how the framing entry is checked, which paths count as URLs, and each way
`read_checkpoint` refuses a file, with the message naming the file and the problem. (The
training runs in test_train.py / test_faults.py read the checkpoints they write; these tests
pin each rule alone, fast enough for mutation testing.)
"""

from __future__ import annotations

import pickle
import re
import zipfile

import pytest
import torch
from helpers.generation import tiny_model, write_ckpt

from s2s.checkpoint import (
    FORMAT,
    CheckpointError,
    Framing,
    _unpickler_reason,
    check_loadable,
    is_url,
    metadata,
    read_checkpoint,
    refuse_url,
)
from s2s.config import MAX_PARAMETERS_ENV


class NotPlainData:
    """What a weights-only reader must refuse: an object of a class of ours."""


@pytest.fixture
def model(tokenizer):
    return tiny_model(tokenizer.vocab_size)


def test_metadata_holds_format_config_tokenizer_and_framing_when_given(model, tokenizer):
    meta = metadata(model.config, tokenizer)
    assert meta == {
        "format": FORMAT,
        "model_config": model.config.to_dict(),
        "tokenizer": tokenizer.backend.to_str(),
    }
    framing = Framing(max_source_length=64, add_bos=True, forced_bos_token_id=0)
    meta = metadata(model.config, tokenizer, framing)
    assert meta["framing"] == {
        "max_source_length": 64,
        "add_bos": True,
        "forced_bos_token_id": 0,
        "forced_eos_token_id": None,
    }


def test_framing_round_trips_and_missing_keys_take_defaults():
    framing = Framing(
        max_source_length=2, add_bos=True, forced_bos_token_id=0, forced_eos_token_id=2
    )
    assert Framing.from_dict(framing.to_dict(), "f") == framing
    assert Framing.from_dict({}, "f") == Framing()
    assert Framing.from_dict({"add_bos": True}, "f") == Framing(add_bos=True)
    assert Framing.from_dict({"forced_eos_token_id": 7}, "f").forced_eos_token_id == 7


@pytest.mark.parametrize(
    "values",
    [
        {"max_source_length": 1},  # shorter than one token and EOS
        {"max_source_length": True},  # a bool is not a length
        {"max_source_length": 8.0},
        {"add_bos": 1},
        {"add_bos": "yes"},
        {"forced_bos_token_id": -1},
        {"forced_eos_token_id": -1},
        {"forced_bos_token_id": "0"},
        {"forced_eos_token_id": 1.0},
        {"max_source_length": 8, "extra_key": 1},
        ["max_source_length"],
        None,
    ],
)
def test_damaged_framing_is_refused_naming_the_file(values):
    with pytest.raises(CheckpointError, match=r"^run/last\.ckpt: damaged s2s framing "):
        Framing.from_dict(values, "run/last.ckpt")


@pytest.mark.parametrize(
    ("path", "url"),
    [
        ("http://host/m.ckpt", True),
        ("s3://bucket/m.ckpt", True),
        ("file:///tmp/m.ckpt", True),
        ("git+ssh://host/m", True),
        ("outputs/run/last.ckpt", False),
        ("/abs/last.ckpt", False),
        ("C:/runs/last.ckpt", False),
        ("runs/a://b", False),  # a scheme has no "/"
        ("1http://host", False),  # a scheme starts with a letter
    ],
)
def test_urls_are_told_from_local_paths(path, url):
    assert is_url(path) is url
    if url:
        for refuse in (refuse_url, read_checkpoint):
            with pytest.raises(CheckpointError) as err:
                refuse(path, "init_from")
            assert str(err.value) == (
                f"init_from={path}: only local files are read (download the file first, and "
                "check where it came from)"
            )
        with pytest.raises(CheckpointError, match=rf"^checkpoint={re.escape(path)}: only local"):
            read_checkpoint(path)  # the setting's default name
    else:
        refuse_url(path, "init_from")  # no error


def test_a_tokenizer_with_more_ids_than_the_model_is_refused(tokenizer):
    small = tiny_model(tokenizer.vocab_size - 1).config
    with pytest.raises(CheckpointError) as err:
        check_loadable(small, tokenizer, "a.ckpt")
    assert str(err.value) == (
        f"a.ckpt: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary "
        f"only {tokenizer.vocab_size - 1} (model vocab_size): they do not belong together"
    )
    check_loadable(tiny_model(tokenizer.vocab_size).config, tokenizer, "a.ckpt")  # equal: fine


def test_a_config_too_large_to_build_is_a_checkpoint_error(model, tokenizer, monkeypatch):
    monkeypatch.setenv(MAX_PARAMETERS_ENV, "1000")
    with pytest.raises(CheckpointError, match=r"^a\.ckpt: the model config describes about"):
        check_loadable(model.config, tokenizer, "a.ckpt")


def test_a_checkpoint_is_read_back_with_its_prefix_stripped(model, tokenizer, tmp_path):
    framing = Framing(max_source_length=32)
    path = write_ckpt(tmp_path / "m.ckpt", model, tokenizer, framing, global_step=5)
    raw = torch.load(path, weights_only=True)
    raw["state_dict"]["loss_fn.weight"] = torch.ones(1)  # not the model's: left out
    torch.save(raw, path)
    loaded = read_checkpoint(path)
    assert set(loaded.state_dict) == set(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict[name], tensor), name
    assert loaded.config == model.config
    assert loaded.tokenizer.digest() == tokenizer.digest()
    assert loaded.framing == framing and loaded.raw["global_step"] == 5
    assert loaded.source == str(path) and loaded.origin == "s2s"


def test_a_checkpoint_without_framing_gets_the_default(model, tokenizer, tmp_path):
    loaded = read_checkpoint(write_ckpt(tmp_path / "m.ckpt", model, tokenizer))
    assert loaded.framing == Framing()


def test_missing_and_non_zip_files_are_refused(write, tmp_path):
    missing = tmp_path / "gone.ckpt"
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(missing)
    assert str(err.value) == f"{missing}: checkpoint not found"
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path}/dir: checkpoint not found")):
        (tmp_path / "dir").mkdir()
        read_checkpoint(tmp_path / "dir")
    text = write("notes.ckpt", "not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(text)
    assert str(err.value) == f"{text}: not a readable checkpoint (not a torch.save zip archive)"


def test_a_truncated_archive_is_refused_with_the_first_line_of_the_reason(
    model, tokenizer, tmp_path
):
    path = write_ckpt(tmp_path / "m.ckpt", model, tokenizer)
    with zipfile.ZipFile(path) as archive:  # drop one stored tensor, keep a valid zip
        kept = [i for i in archive.infolist() if not i.filename.endswith("/data/0")]
        entries = [(i, archive.read(i)) for i in kept]
    assert len(entries) < len(zipfile.ZipFile(path).infolist())
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            archive.writestr(info, data)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not a readable checkpoint (") and "\n" not in message


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RuntimeError("PytorchStreamReader failed\n  at frame 2"), "PytorchStreamReader failed"),
        (EOFError("  Ran out of input  "), "Ran out of input"),
        (OSError(" \n "), "OSError"),
        (zipfile.BadZipFile(), "BadZipFile"),
    ],
)
def test_an_unreadable_file_is_refused_with_the_first_line_of_the_reason(
    model, tokenizer, tmp_path, monkeypatch, error, reason
):
    path = write_ckpt(tmp_path / "m.ckpt", model, tokenizer)

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "load", failing)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value) == f"{path}: not a readable checkpoint ({reason})"


def test_files_are_loaded_weights_only_onto_the_cpu(model, tokenizer, tmp_path, monkeypatch):
    """`weights_only=True` explicitly: torch 2.4 and 2.5 (which pyproject allows) default to
    full unpickling. `map_location="cpu"`: a checkpoint written on a GPU opens without one."""
    path = write_ckpt(tmp_path / "m.ckpt", model, tokenizer)
    calls = []
    real = torch.load

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording)
    read_checkpoint(path)
    assert calls == [{"map_location": "cpu", "weights_only": True}]


def test_a_file_whose_tokenizer_outgrows_its_model_is_refused_naming_it(model, tokenizer, tmp_path):
    path = write_ckpt(tmp_path / "m.ckpt", tiny_model(tokenizer.vocab_size - 3), tokenizer)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: the tokenizer has"):
        read_checkpoint(path)


def test_pickled_code_is_refused_naming_what_was_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "s2s": {}, "payload": NotPlainData()}, path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: refused: the checkpoint holds objects that are not")
    assert "NotPlainData" in message and message.endswith("s2s never unpickles code")
    assert "Please use" not in message and "\x1b" not in message


@pytest.mark.parametrize(
    "content",
    [{"state_dict": {}}, {"s2s": {}}, [1, 2], {"model": {}, "s2s": {}}],
    ids=["no s2s", "no state_dict", "a list", "state_dict misnamed"],
)
def test_a_file_that_is_not_an_s2s_checkpoint_is_refused(tmp_path, content):
    path = tmp_path / "other.ckpt"
    torch.save(content, path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value) == f"{path}: not an s2s checkpoint (no 's2s' and 'state_dict' entries)"


@pytest.mark.parametrize("damage", ["no config", "bad config", "no tokenizer", "bad tokenizer"])
def test_damaged_metadata_is_refused(model, tokenizer, tmp_path, damage):
    path = write_ckpt(tmp_path / "m.ckpt", model, tokenizer)
    raw = torch.load(path, weights_only=True)
    meta = raw["s2s"]
    if damage == "no config":
        del meta["model_config"]
    elif damage == "bad config":
        meta["model_config"]["no_such_field"] = 1
    elif damage == "no tokenizer":
        del meta["tokenizer"]
    else:
        meta["tokenizer"] = "{not json"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: damaged s2s metadata \("):
        read_checkpoint(path)


def test_damaged_framing_in_a_file_is_refused(model, tokenizer, tmp_path):
    path = write_ckpt(tmp_path / "m.ckpt", model, tokenizer)
    raw = torch.load(path, weights_only=True)
    raw["s2s"]["framing"] = {"max_source_length": 0}
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: damaged s2s framing"):
        read_checkpoint(path)


def test_the_unpickler_reason_is_the_line_naming_what_was_refused():
    err = pickle.UnpicklingError(
        "Weights only load failed. This file can still be loaded...\n"
        "  \x1b[1mWeightsUnpickler error: \x1b[0mUnsupported global: GLOBAL my.Evil was not an "
        "allowed global by default. Please use `torch.serialization.add_safe_globals`.\n"
        "Check the documentation."
    )
    assert _unpickler_reason(err) == (
        "WeightsUnpickler error: Unsupported global: GLOBAL my.Evil was not an allowed global "
        "by default"
    )
    # either marker alone picks its line over the ones before it
    only_unsupported = pickle.UnpicklingError("Weights only load failed.\nUnsupported operand 80")
    assert _unpickler_reason(only_unsupported) == "Unsupported operand 80"
    only_unpickler = pickle.UnpicklingError("Weights only load failed.\nUnpickler error: bad")
    assert _unpickler_reason(only_unpickler) == "Unpickler error: bad"
    plain = pickle.UnpicklingError("\n  first line\nsecond")
    assert _unpickler_reason(plain) == "first line"
    assert _unpickler_reason(pickle.UnpicklingError("")) == "UnpicklingError"
