"""`--ray`: corpora transcribed and evaluated on a real two-node Ray cluster (2 x 1 CPU, started here).

The cluster tests run real audio through the embedded base and compare with the single-process path on the same
clips. Both paths run with one BLAS thread: faster-whisper's log-mel features differ in the last bits with the
number of OpenBLAS threads, which can change a character, and Ray gives each worker as many as it has CPUs.
The cluster's processes are started here and checked gone at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from whisper_zh.cli import main
from whisper_zh.distributed.plan import Item, plan_groups
from whisper_zh.distributed.pseudolabels import ConfidenceFilter, confidence, write_manifest
from whisper_zh.distributed.store import Outcome, ResultStore
from whisper_zh.errors import UsageError
from whisper_zh.results import Segment, Transcription

REPO = Path(__file__).resolve().parents[1]
GROUP_SECONDS = 5.0  # two short clips per group: several groups, so several workers and a kill midway
ENV_ONE_THREAD = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------------------------------------------
# Without Ray: planning, the result store, pseudo-label filters, flags


def test_groups_follow_the_transcribers_rule():
    items = [Item(f"f{i}", f"f{i}", d) for i, d in enumerate([2.0, 2.0, 1.0, 0.0, 6.0, 1.0])]
    groups = plan_groups(items, 5.0)
    # like Transcriber.transcribe_iter: consecutive inputs until 5 s are held; an unreadable file (0 s) rides along
    assert [[i.key for i in g] for g in groups] == [["f0", "f1", "f2"], ["f3", "f4"], ["f5"]]


def test_every_core_gets_a_group_of_a_short_job(aishell_rows):
    """400 s of clips on 4 workers: one 1200 s group (one busy worker, three idle) before; one group each now,
    consecutive clips, every clip once. A size given is kept (it decides the packs)."""
    from whisper_zh.distributed.pipeline import RayOptions, plan_job

    items = [Item(row["path"], row["id"], row["duration"]) for row in aishell_rows[:120]]
    groups, workers = plan_job(items, RayOptions(), 4)
    assert workers == 4 and len(groups) == 4 and [i for g in groups for i in g] == items
    assert plan_job(items, RayOptions(group_seconds=1200), 4)[1] == 1
    assert plan_job(items[:1], RayOptions(), 4)[1] == 1


def _transcription(text: str, logprob: float = -0.2, no_speech: float = 0.1, ratio: float = 1.0) -> Transcription:
    return Transcription("a.wav", [Segment(0, 0.0, 1.0, text, logprob, no_speech, ratio, tokens=[1, 2])], "zh", 1.5)


def test_store_skips_complete_inputs_and_ignores_half_written_shards(tmp_path):
    store = ResultStore(tmp_path)
    store.claim({"model": "base"})
    store.write_shard([Outcome("a.wav", "a", 1.5, _transcription("你好")), Outcome("b.wav", "b", 0.0, error="bad")])
    (store.shard_dir / ".part-0123.jsonl.x1y2.tmp").write_text('{"key": "c.wav"', encoding="utf-8")  # killed mid-write
    merged = store.merged()
    assert merged.completed() == {"a.wav"}  # the error is tried again by a re-run, the temporary file is no shard
    assert merged.outcomes["a.wav"].transcription.text == "你好"
    store.claim({"model": "base"})  # the same settings: resume, and the temporary file is cleaned up
    assert not list(store.shard_dir.glob(".*.tmp"))
    with pytest.raises(UsageError, match="other settings .*model"):
        store.claim({"model": "large-v3"})


def test_a_shard_row_holds_the_json_formats_content():
    # The README: a shard row's `transcription` is the json format's content. It used to be the raw dataclass
    # dict, with "tokens": [] and "words": null in every segment, which the json format leaves out.
    from whisper_zh.results import Word
    from whisper_zh.writers import format_transcription

    bare = Transcription("a.wav", [Segment(0, 0.0, 1.0, "你好。", -0.2, 0.1, 1.0)], "zh", 1.5)
    timed = Transcription("b.wav", [Segment(0, 0.0, 1.0, "你好。", -0.2, 0.1, 1.0,
                                            words=[Word(0.0, 0.5, "你", 0.9), Word(0.5, 1.0, "好。", 0.8)])], "zh", 1.5)
    for transcription in (bare, timed):
        line = Outcome(transcription.source, "a", 1.5, transcription).to_json()
        assert json.loads(line)["transcription"] == json.loads(format_transcription(transcription, "json"))
        assert Outcome.from_json(line).transcription == transcription  # and it reads back as it was
    assert '"tokens"' not in Outcome("a.wav", "a", 1.5, bare).to_json()


def test_shard_of_the_same_group_is_replaced_not_duplicated(tmp_path):
    store = ResultStore(tmp_path)
    group = [Outcome("a.wav", "a", 1.5, _transcription("你好"))]
    assert store.write_shard(group) == store.write_shard(group)
    store.write_shard([Outcome("a.wav", "a", 1.5, _transcription("你好")), Outcome("c.wav", "c", 1.0, _transcription("再见"))])
    merged = store.merged()
    assert len(store.shards()) == 2 and merged.duplicates == 1  # two shards with a.wav: counted, read once
    assert sorted(merged.completed()) == ["a.wav", "c.wav"]


def test_pseudo_label_filters(tmp_path):
    outcomes = [
        Outcome("/d/good.wav", "good", 1.5, _transcription("今天天气很好")),
        Outcome("/d/unsure.wav", "unsure", 1.5, _transcription("嗯", logprob=-1.4)),
        Outcome("/d/loop.wav", "loop", 1.5, _transcription("的" * 40, ratio=9.0)),
        Outcome("/d/silent.wav", "silent", 1.5, _transcription("", no_speech=0.9)),
        Outcome("/d/bad.wav", "bad", 0.0, error="bad"),
    ]
    counts = write_manifest(outcomes, tmp_path, ConfidenceFilter())
    kept = [json.loads(line) for line in counts.path.read_text(encoding="utf-8").splitlines()]
    rejected = {json.loads(line)["id"]: json.loads(line)["rejected"]
                for line in counts.rejected_path.read_text(encoding="utf-8").splitlines()}
    assert [row["id"] for row in kept] == ["good"]
    assert set(kept[0]) == {"id", "audio", "text", "duration", "avg_logprob", "no_speech_prob", "compression_ratio"}
    assert rejected == {"unsure": "avg_logprob -1.400 < -1", "loop": "compression_ratio 9.00 > 2.4",
                        "silent": "no text"}
    strict = ConfidenceFilter(max_no_speech=0.05)
    assert strict.reasons("好", confidence(_transcription("好"))) == ["no_speech_prob 0.100 > 0.05"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["transcribe", "x.wav", "--ray"], "--ray needs --output-dir"),
        (["transcribe", "x.wav", "--ray", "x.wav", "--output-dir", "o"], "--ray x.wav: not a Ray address"),
        (["transcribe", "x.wav", "--format", "manifest"], "--format manifest needs --ray"),
        (["transcribe", "x.wav", "--ray", "--output-dir", "o", "--threads-per-worker", "0"], "at least 1"),
    ],
)
def test_usage_errors(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.wav").write_bytes(b"")
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# On a two-node cluster


def _clips(aishell_rows: list[dict], n: int) -> list[str]:
    return [row["path"] for row in aishell_rows[:n]]  # W0001...: 2-3 s commands and names


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of one CPU each, in this process; the test process is the driver. Every process the
    cluster started is checked gone afterwards."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        yield cluster
    finally:
        started = _cluster_processes(cluster)
        ray.shutdown()
        cluster.shutdown()
        deadline = time.monotonic() + 60
        while (alive := [p for p in started if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not alive, f"Ray processes left behind: {[p.pid for p in alive]}"


def _cluster_processes(cluster) -> list:
    import psutil

    out = []
    for node in cluster.list_all_nodes():
        for infos in node.all_processes.values():
            for info in infos:
                try:
                    process = psutil.Process(info.process.pid)
                    out += [process, *process.children(recursive=True)]
                except psutil.NoSuchProcess:
                    continue
    return out


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _workers(cluster) -> list:
    return [p for p in _cluster_processes(cluster) if "MapWorker" in " ".join(_cmdline(p))]


def _cmdline(process) -> list[str]:
    try:
        return process.cmdline()
    except Exception:  # noqa: BLE001 - gone while we looked
        return []


@pytest.fixture(scope="module")
def reference(aishell_rows, tmp_path_factory) -> dict[str, str]:
    """The single-process path on the same clips, grouped as the Ray jobs group them, with one BLAS thread."""
    clips = _clips(aishell_rows, 9)
    out = tmp_path_factory.mktemp("reference") / "texts.json"
    script = (
        "import json, sys\n"
        "from whisper_zh import Transcriber\n"
        "clips = json.loads(sys.argv[1])\n"
        "t = Transcriber('base', cpu_threads=1)\n"
        f"texts = {{clips[i]: r.text for i, r in t.transcribe_iter(clips, group_seconds={GROUP_SECONDS})}}\n"
        "open(sys.argv[2], 'w', encoding='utf-8').write(json.dumps(texts, ensure_ascii=False))\n"
    )
    subprocess.run([sys.executable, "-c", script, json.dumps(clips), str(out)], env=ENV_ONE_THREAD, check=True,
                   timeout=300)
    return json.loads(out.read_text(encoding="utf-8"))


def _transcribed_rows(store: ResultStore) -> Counter:
    """How many shard rows hold a transcription of each input (1 each: nothing lost, nothing duplicated)."""
    counts: Counter = Counter()
    for shard in store.shards():
        for line in shard.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            counts[row["key"]] += "transcription" in row
    return counts


def _texts(store: ResultStore) -> dict[str, str]:
    return {key: o.transcription.text for key, o in store.merged().outcomes.items() if o.transcription}


def test_worker_killed_midway_and_a_bad_file(cluster, reference, aishell_rows, tmp_path):
    """Two nodes, a corrupt file among the clips, and one worker killed with SIGKILL mid-job: the bad file is
    recorded and the job goes on, the killed worker's group is retried, and every transcript equals the
    single-process one, once."""
    from whisper_zh.distributed.pipeline import RayOptions, run_job
    from whisper_zh.distributed.worker import WorkerSpec

    clips = _clips(aishell_rows, 9)
    bad = tmp_path / "broken.flac"
    bad.write_bytes(b"fLaC this is not audio")
    inputs = clips[:4] + [str(bad)] + clips[4:]
    items = [Item(path, Path(path).stem, _duration(path)) for path in inputs]
    store = ResultStore(tmp_path / "out")
    store.claim({"model": "base"})
    options = RayOptions(num_workers=2, threads_per_worker=1, group_seconds=GROUP_SECONDS)
    outcome: dict = {}
    job = threading.Thread(target=lambda: outcome.update(
        summary=run_job(items, store, WorkerSpec(threads=1), options, progress=False)))
    job.start()
    killed = _kill_a_worker_after_first_shard(cluster, store, job)
    job.join(timeout=300)
    summary = outcome["summary"]

    assert killed is not None, "the job ended before a worker could be killed"
    assert len(summary.peak_rss_mb) >= 2  # more than one worker process did the work
    assert _texts(store) == reference
    assert _transcribed_rows(store) == {**{clip: 1 for clip in clips}, str(bad): 0}
    assert store.merged().duplicates == 0
    errors = [json.loads(line) for line in (store.root / "errors.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["audio"] for e in errors] == [str(bad)] and "cannot decode audio" in errors[0]["error"]
    assert (summary.done, summary.failed, summary.skipped) == (9, 1, 0)


def _duration(path: str) -> float:
    from whisper_zh.distributed.plan import probe_duration

    return probe_duration(path)


def _kill_a_worker_after_first_shard(cluster, store: ResultStore, job: threading.Thread) -> int | None:
    while job.is_alive() and not store.shards():
        time.sleep(0.2)
    for process in _workers(cluster) if job.is_alive() else []:
        os.kill(process.pid, signal.SIGKILL)
        return process.pid
    return None


def test_resume_after_the_driver_is_killed(cluster, reference, aishell_rows, tmp_path):
    """`transcribe --ray ADDRESS` killed with SIGKILL after its first shard, then run again: the second run skips
    what the first finished, and each clip ends up transcribed exactly once."""
    clips = _clips(aishell_rows, 9)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "whisper_zh", "transcribe", *clips, "--ray", cluster.address,
               "--output-dir", str(out), "--format", "jsonl", "--num-workers", "1",
               "--group-seconds", str(GROUP_SECONDS), "--quiet"]
    first = subprocess.Popen(command, env=ENV_ONE_THREAD, stderr=subprocess.PIPE, text=True)
    store = ResultStore(out)
    while first.poll() is None and not store.shards():
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, f"the first run ended on its own: {first.stderr.read()}"
    finished_first = len(store.merged().completed())
    assert 1 <= finished_first < len(clips)

    second = subprocess.run([*command[:-1]], env=ENV_ONE_THREAD, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"{len(clips) - finished_first} done, 0 failed, {finished_first} skipped" in second.stderr
    assert _texts(store) == reference
    assert _transcribed_rows(store) == {clip: 1 for clip in clips}


def test_evaluate_with_ray_equals_evaluate(cluster, aishell_rows, tmp_path):
    """The same report, to the last digit, with and without Ray (both with one BLAS thread)."""
    manifest = tmp_path / "manifest.jsonl"
    rows = aishell_rows[20:24]
    manifest.write_text("".join(json.dumps({"id": r["id"], "audio": r["path"], "text": r["text"],
                                            "duration": r["duration"]}, ensure_ascii=False) + "\n" for r in rows),
                        encoding="utf-8")
    plain = subprocess.run(
        [sys.executable, "-m", "whisper_zh", "evaluate", "--data", str(manifest), "--output-dir",
         str(tmp_path / "plain"), "--threads", "1", "--resamples", "200", "--quiet"],
        env=ENV_ONE_THREAD, capture_output=True, text=True, timeout=300,
    )
    assert plain.returncode == 0, plain.stderr
    assert main(["evaluate", "--data", str(manifest), "--output-dir", str(tmp_path / "ray"), "--ray",
                 "--num-workers", "1", "--resamples", "200", "--quiet"]) == 0
    a, b = (json.loads((tmp_path / d / "report.json").read_text(encoding="utf-8")) for d in ("plain", "ray"))
    for key in ("metrics", "data", "worst", "confusions", "bad_rows", "decoding", "model"):
        assert a[key] == b[key], key
    predictions = [(tmp_path / d / "predictions.jsonl").read_text(encoding="utf-8") for d in ("plain", "ray")]
    assert predictions[0] == predictions[1]


def test_pseudo_label_manifest_feeds_evaluate(cluster, aishell_rows, tmp_path, capsys):
    """`--format manifest` writes rows that `evaluate` reads as they are (and `finetune` through the same loader)."""
    clips = _clips(aishell_rows, 4)
    out = tmp_path / "labels"
    assert main(["transcribe", *clips, "--ray", "--output-dir", str(out), "--format", "manifest", "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    rejected = (out / "manifest-rejected.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) + len(rejected) == 4 and rows
    assert all(r["avg_logprob"] >= -1.0 and r["compression_ratio"] <= 2.4 and r["text"] for r in rows)
    from whisper_zh.data import load_source

    source = load_source(out / "manifest.jsonl")
    assert [u.audio for u in source] == [r["audio"] for r in rows] and not source.problems


def test_a_group_whose_worker_always_dies_is_reported_and_the_job_goes_on(cluster, tmp_path, monkeypatch):
    """A file that kills its worker every time: Ray replaces the worker and retries the group --max-retries
    times, then the job records the group's files as failed and finishes the others."""
    from whisper_zh.distributed import pipeline
    from whisper_zh.distributed.worker import TranscribeWorker, WorkerSpec

    class DyingWorker(TranscribeWorker):
        def __init__(self, spec: WorkerSpec) -> None:  # no model: this test is about the worker's death
            self.spec, self.worker, self.model = spec, f"test:{os.getpid()}", "{}"

        def transcribe(self, group):
            if any("poison" in item.key for item in group):
                with open(attempts, "a", encoding="utf-8") as log:
                    log.write(f"{os.getpid()}\n")
                os._exit(1)
            return [f"{item.key}: checked" for item in group]

    attempts = str(tmp_path / "attempts")
    monkeypatch.setattr(pipeline, "TranscribeWorker", DyingWorker)
    items = [Item("/a/one.wav", "one", 1.0), Item("/a/poison.wav", "poison", 1.0), Item("/a/two.wav", "two", 1.0)]
    store = ResultStore(tmp_path)
    store.claim({"model": "none"})
    options = pipeline.RayOptions(num_workers=1, max_retries=1, group_seconds=1.0)
    summary = pipeline.run_job(items, store, WorkerSpec(), options, progress=False)
    reasons = {o.key: o.error for o in summary.failures}
    assert reasons == {"/a/one.wav": "/a/one.wav: checked", "/a/two.wav": "/a/two.wav: checked",
                       "/a/poison.wav": "/a/poison.wav: not transcribed: its group failed on all 2 tries (its worker died)"}
    assert len((store.root / "errors.jsonl").read_text(encoding="utf-8").splitlines()) == 3
    assert len(set(Path(attempts).read_text(encoding="utf-8").split())) == 2  # two worker processes died on it


def test_an_unwritable_output_dir_is_one_line_before_ray_starts(example_clips, tmp_path, capsys):
    """Issue 30, defect 6: ``--ray`` into a folder that cannot be written printed a traceback (after Ray had
    started); now the same one-line error as without Ray, before any work."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    targets = [blocker / "sub"] + ([read_only] if os.geteuid() != 0 else [])  # root writes anywhere
    for target in targets:
        started = time.monotonic()
        assert main(["transcribe", example_clips[0]["path"], "--ray", "--output-dir", str(target), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "cannot be written" in err and len(err.splitlines()) == 1, err
        assert time.monotonic() - started < 10  # no Ray cluster was started
