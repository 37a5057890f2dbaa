"""Weights & Biases tracking, for real: train.py on the tiny model with WANDB_MODE=offline, and the offline run
file read back here as W&B's own protobuf records (the reader below follows the file format, not wandb's code:
a 7-byte header, then LevelDB-log framing in 32 KiB blocks, each record a wandb_internal_pb2.Record).
The references are train.py's own outputs: metrics.jsonl, config.yaml and the held-out rows."""
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml

from config import ConfigError, check_config, load_config

ROOT = Path(__file__).resolve().parents[1]
BLOCK, HEADER = 32 * 1024, 7         # LevelDB log: 32 KiB blocks; chunk header crc32 u32, length u16, type u8
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
TINY = ["--config", str(ROOT / "configs/experiments/tiny.yaml"), "prompts_per_step=4", "G=4", "rollout.engine=hf",
        "wandb.enabled=true"]


def read_records(path):
    """Every Record of a .wandb file: check the file header (":W&B", u16 0xBEE1, version 0), walk the chunks
    (a chunk never straddles a block; fewer than 7 bytes left in a block are padding), check each chunk's
    crc32 (zlib's, over the type byte then the payload), join first/middle/last pieces and parse."""
    wandb_pb = pytest.importorskip("wandb.proto.wandb_internal_pb2", reason="wandb is not installed")
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<HB", data[4:7]) == (0xBEE1, 0), data[:7]
    pos, pieces, records = 7, None, []
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        payload = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:  # zero padding
            continue
        assert len(payload) == length and zlib.crc32(bytes([kind]) + payload) == crc, f"bad chunk at {pos}"
        if kind in (FULL, FIRST):
            assert pieces is None, f"record started inside another at {pos}"
            pieces = [payload]
        else:
            assert kind in (MIDDLE, LAST) and pieces is not None, f"chunk type {kind} out of place at {pos}"
            pieces.append(payload)
        if kind in (FULL, LAST):
            record = wandb_pb.Record()
            record.ParseFromString(b"".join(pieces))
            records.append(record)
            pieces = None
    assert pieces is None, "the file ends inside a record"
    return records


def items(record_items):
    """{key: value} of history / config items; an item's key is `key`, or the path `nested_key` into a dict
    (a logged dict, such as a table's reference, comes as one item per leaf)."""
    out = {}
    for i in record_items:
        *outer, last = list(i.nested_key) or [i.key]
        into = out
        for part in outer:
            into = into.setdefault(part, {})
        into[last] = json.loads(i.value_json)
    return out


def history(records):
    """{step: {key: value}} of the history records."""
    return {r.history.step.num: items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"}


def of_type(records, kind):
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def offline_runs(run_dir):
    """{id: [run file, ...]} of the offline runs under run_dir/wandb, oldest first."""
    runs = {}
    for d in sorted((Path(run_dir) / "wandb").glob("offline-run-*")):
        (file,) = d.glob("run-*.wandb")
        runs.setdefault(d.name.rsplit("-", 1)[1], []).append(file)
    return runs


def train_cli(args, torchrun=False):
    pytest.importorskip("wandb", reason="wandb is not installed")
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29573"] if torchrun else []
    proc = subprocess.run([sys.executable, *launcher, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_offline_run_holds_the_config_every_metric_and_the_eval_table(tmp_path, tiny_model):
    """A 2-step run evaluated after each step: one offline run, with the id kept in the run dir, the name,
    project and tags of the config, the merged config equal to config.yaml, each step's history holding
    every metrics.jsonl key with its value, and each evaluation's table holding the first problems of the
    held-out file, whose scores average to the logged val/ accuracy (limit = eval_samples = 6, n = 1)."""
    run = tmp_path / "run"
    train_cli([*TINY, f"model.path={tiny_model}", f"out_dir={run}", "steps=2", "save_every=0", "eval.every=1",
               "eval.limit=6", f"eval.benchmarks=[{tiny_model / 'synthetic.jsonl'}]", "wandb.project=rlvr-test",
               "wandb.name=two-steps", "wandb.tags=[tiny, offline]", "wandb.eval_samples=6"])
    run_id = (run / "wandb_run_id").read_text().strip()
    assert list(offline_runs(run)) == [run_id] and len(offline_runs(run)[run_id]) == 1
    (file,) = offline_runs(run)[run_id]
    records = read_records(file)

    (start,) = of_type(records, "run")
    assert (start.run_id, start.project, start.display_name, list(start.tags)) == \
           (run_id, "rlvr-test", "two-steps", ["tiny", "offline"])
    config = items(start.config.update)
    for update in of_type(records, "config"):  # wandb may send the config again as its own record
        config.update(items(update.update))
    config.pop("_wandb", None)
    assert config == yaml.safe_load((run / "config.yaml").read_text())

    logged, written = history(records), metrics(run)
    assert sorted(logged) == [r["step"] for r in written] == [1, 2]
    rows = [json.loads(line) for line in (tiny_model / "synthetic.jsonl").read_text().splitlines()][:6]
    for record in written:
        got = logged[record["step"]]
        assert set(record) <= set(got), sorted(set(record) - set(got))
        assert {k: got[k] for k in record} == pytest.approx(record, rel=1e-12, abs=0)
        table = got["val/samples"]
        assert table["_type"] == "table-file" and table["nrows"] == 6
        content = json.loads((file.parent / "files" / table["path"]).read_text())
        assert content["columns"] == ["step", "benchmark", "id", "problem", "response", "extracted", "answer",
                                      "score"]
        by = [dict(zip(content["columns"], r)) for r in content["data"]]
        assert [(r["step"], r["benchmark"], r["id"], r["problem"], r["answer"]) for r in by] == \
               [(record["step"], "synthetic", row["id"], row["problem"], row["answer"]) for row in rows]
        assert sum(r["score"] for r in by) / 6 == pytest.approx(record["val/synthetic"], abs=1e-12)
    (end,) = of_type(records, "exit")
    assert end.exit_code == 0


def test_resume_continues_the_same_wandb_run_and_a_fresh_run_starts_another(tmp_path, tiny_model):
    """--resume logs into the run id kept in the run dir, from the step after the checkpoint; a run started
    again without --resume gets a new id."""
    run = tmp_path / "run"
    common = [*TINY, f"model.path={tiny_model}", f"out_dir={run}", "save_every=1", "eval.every=0"]
    train_cli([*common, "steps=1"])
    first = (run / "wandb_run_id").read_text().strip()
    train_cli([*common, "steps=2", "--resume"])
    assert (run / "wandb_run_id").read_text().strip() == first
    files = offline_runs(run)[first]
    assert len(files) == 2 and [sorted(history(read_records(f))) for f in files] == [[1], [2]]
    (resumed,) = of_type(read_records(files[1]), "run")
    assert resumed.run_id == first
    assert history(read_records(files[1]))[2]["reward_mean"] == metrics(run)[1]["reward_mean"]
    train_cli([*common, "steps=1"])
    second = (run / "wandb_run_id").read_text().strip()
    assert second != first and set(offline_runs(run)) == {first, second}


def test_two_ranks_log_once_from_rank_0(tmp_path, tiny_model):
    """Under torchrun (2 gloo ranks) only rank 0 starts a W&B run, and it logs the step's metrics.jsonl
    record (which holds every rank's groups)."""
    run = tmp_path / "run"
    train_cli([*TINY, f"model.path={tiny_model}", f"out_dir={run}", "steps=1", "save_every=0", "eval.every=0"],
              torchrun=True)
    ((run_id, (file,)),) = offline_runs(run).items()
    (record,) = metrics(run)
    got = history(read_records(file))[1]
    assert record["groups"] == 4 and {k: got[k] for k in record} == pytest.approx(record, rel=1e-12, abs=0)


def test_wandb_asked_for_but_not_installed_is_one_config_error(monkeypatch):
    """sys.modules[name] = None is how Python marks a module as not importable: find_spec returns None."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    cfg = load_config(ROOT / "configs/experiments/tiny.yaml", ["wandb.enabled=true"])
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert "'wandb.enabled' is true but the wandb package is not installed" in str(err.value)
    assert "\n" not in str(err.value)
    check_config(load_config(ROOT / "configs/experiments/tiny.yaml", ["wandb.enabled=false"]))  # off: no wandb needed


@pytest.mark.parametrize("override, message", [
    ("wandb.mode=cloud", "'wandb.mode' must be online, offline, disabled or empty, got 'cloud'"),
    ("wandb.eval_samples=-1", "'wandb.eval_samples' must be >= 0, got -1"),
    ("wandb.projet=x", "unknown config key 'wandb.projet'; did you mean 'project'?"),
    ("wandb.tags=tiny", "config key 'wandb.tags' expects a list, got 'tiny'"),
])
def test_bad_wandb_keys_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        check_config(load_config(ROOT / "configs/experiments/tiny.yaml", [override]))
