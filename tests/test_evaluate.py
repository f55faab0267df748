"""Evaluation: scoring against hand-computed numbers, report files, comparison, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from whisper_zh.cli import main
from whisper_zh.data import BadRow, DataSource
from whisper_zh.errors import MetricError
from whisper_zh.evaluation import (
    Prediction,
    build_evaluation,
    compare_reports,
    format_comparison,
    render_markdown,
    score_predictions,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "aishell1-sample-S0150"
needs_shared = pytest.mark.skipif(
    not (SHARED / "manifest.jsonl").is_file(), reason=f"shared AISHELL clips not found at {SHARED}"
)


def _predictions() -> list[Prediction]:
    return [
        Prediction("u1", "设定二十九度", "设定29度。"),  # plain: 2 S + 1 D of 6; numbers: exact
        Prediction("u2", "我爱北京天安门", "我爱天安门啊"),  # 2 D + 1 I of 7 under both
        Prediction("u3", "國際經濟", "国际经济"),  # exact once converted to Simplified
        Prediction("u4", "。", "你好"),  # reference empty after normalisation: skipped
        Prediction("u5", "你好", None, error="unreadable audio: x.wav: cannot decode audio"),
    ]


def test_score_predictions_hand_computed():
    scores = score_predictions(_predictions(), n_resamples=200)
    plain, numbers = scores.metrics["plain"], scores.metrics["numbers"]
    assert (plain["cer"]["substitutions"], plain["cer"]["deletions"], plain["cer"]["insertions"]) == (2, 3, 1)
    assert plain["cer"]["ref_len"] == 6 + 7 + 4
    assert plain["cer"]["rate"] == pytest.approx(6 / 17)
    # With numbers normalised 二十九 and 29 both become "29": u1 is exact, and it has 5 reference characters.
    assert numbers["cer"]["rate"] == pytest.approx(3 / 16)
    assert plain["ser"]["rate"] == pytest.approx(2 / 3) and numbers["ser"]["rate"] == pytest.approx(1 / 3)
    assert plain["cer"]["ci_low"] <= plain["cer"]["rate"] <= plain["cer"]["ci_high"]
    assert plain["wer"]["segmenter"] == "jieba"
    assert {b.id: b.reason for b in scores.skipped} == {
        "u4": "reference empty after normalisation (plain, numbers)",
        "u5": "unreadable audio: x.wav: cannot decode audio",
    }
    with pytest.raises(MetricError, match="no utterance"):
        score_predictions([Prediction("x", "", "a")])
    # every row bad: each reason counted on its own, the loader's rows included (it said "(0 skipped)")
    dropped = [BadRow("g", "audio file not found: g.wav", "m.jsonl:1", "missing_audio")]
    with pytest.raises(MetricError) as info:
        score_predictions([Prediction("x", "", "a"), _predictions()[4]], dropped=dropped)
    assert str(info.value) == (
        "no utterance could be scored: all 3 row(s) are unusable (1 audio file not found, 1 empty reference text, "
        "1 audio cannot be decoded); the first: m.jsonl:1: audio file not found: g.wav"
    )


def test_report_files(tmp_path):
    predictions = _predictions()
    source = DataSource("fixture.jsonl", "jsonl", [], [])
    evaluation = build_evaluation(
        score_predictions(predictions, n_resamples=100),
        source,
        model={"name": "fixture"},
        timing={"wall_seconds": 2.0, "audio_seconds": 8.0, "real_time_factor": 0.25},
        all_predictions=predictions,
    )
    paths = evaluation.write(tmp_path)
    report = json.loads(paths["report"].read_text(encoding="utf-8"))
    assert report["data"] == {
        "location": "fixture.jsonl",
        "format": "jsonl",
        "utterances": 5,
        "problems": 0,
        "scored": 3,
        "skipped": 2,
    }
    assert report["normalisation"]["numbers"]["steps"] == [
        "width",
        "script:simplified",
        "lowercase",
        "numbers:arabic",
        "punctuation",
        "whitespace",
        "letters",
    ]
    assert report["metrics"]["plain"]["cer"]["rate"] == pytest.approx(6 / 17)
    assert {"python", "jiwer", "opencc", "cn2an"} <= set(report["versions"])
    assert [w["id"] for w in report["worst"]] == ["u1", "u2"]  # u3 has no error and is not listed
    assert report["worst"][0]["diff"] == "设定[二十→29][-九]度"
    assert {"ref": "九", "hyp": "", "count": 1} in report["confusions"]
    rows = [json.loads(line) for line in paths["predictions"].read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["u1", "u2", "u3", "u4", "u5"]  # one row per utterance, in data order
    assert rows[0]["scores"]["numbers"] == {
        "ref": "设定29度",
        "hyp": "设定29度",
        "substitutions": 0,
        "deletions": 0,
        "insertions": 0,
        "ref_len": 5,
        "errors": 0,
    }
    assert rows[4]["skipped"].startswith("unreadable audio")
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert markdown == render_markdown(report)
    assert "| CER | plain | 35.29 |" in markdown
    assert "| u2 | 3 / 7 | 42.9 | 我爱[-北京]天安门[+啊] |" in markdown
    assert "| u5 | unreadable audio: x.wav: cannot decode audio |" in markdown
    assert "real-time factor 0.250" in markdown


def _write_system(tmp_path: Path, name: str, hyps: list[str], refs: list[str]) -> Path:
    predictions = [Prediction(f"u{i}", r, h) for i, (r, h) in enumerate(zip(refs, hyps, strict=True))]
    evaluation = build_evaluation(
        score_predictions(predictions, n_resamples=100), None, all_predictions=predictions
    )
    return evaluation.write(tmp_path / name)["report"]


def test_compare_reports(tmp_path, capsys):
    refs = ["设定二十九度", "我爱北京天安门", "今天天气很好"] * 20
    worse = ["设定二十八度", "我爱天安门", "今天天气很好"] * 20  # 3 errors per 19 characters
    better = ["设定二十九度", "我爱北京天安门", "今天天汽很好"] * 20  # 1 error per 19 characters
    a = _write_system(tmp_path, "a", worse, refs)
    b = _write_system(tmp_path, "b", better, refs)
    comparison = compare_reports(a, b, n_resamples=500)
    assert comparison.utterances == 60
    plain = comparison.cer["plain"]
    assert plain["rate_a"] == pytest.approx(3 / 19) and plain["rate_b"] == pytest.approx(1 / 19)
    assert plain["delta"] == pytest.approx(-2 / 19)
    assert plain["ci_high"] < 0 and plain["p_value"] <= 0.01
    assert "B better" in format_comparison(comparison)
    same = compare_reports(a, a, n_resamples=200)
    assert same.cer["plain"]["delta"] == 0 and same.cer["plain"]["p_value"] == 1.0
    assert "no significant difference" in format_comparison(same)
    # Through the CLI.
    assert main(["evaluate", "--compare", str(a), str(b), "--resamples", "200"]) == 0
    assert "B better" in capsys.readouterr().out
    other = _write_system(tmp_path, "other", ["别的"], ["不同的句子"])
    assert main(["evaluate", "--compare", str(a), str(other)]) == 2
    assert "share no scored utterance" in capsys.readouterr().err


def test_cli_refuses_bad_arguments_before_loading_the_model(tmp_path, capsys):
    assert main(["evaluate", "--data", "/nonexistent/manifest.jsonl"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["evaluate"]) == 2
    manifest = tmp_path / "m.jsonl"
    clip = Path(__file__).resolve().parents[1] / "examples" / "BAC009S0150W0121.flac"
    manifest.write_text(json.dumps({"audio": str(clip), "text": "好"}) + "\n", encoding="utf-8")
    (tmp_path / "file").write_text("", encoding="utf-8")
    assert main(["evaluate", "--data", str(manifest), "--output-dir", str(tmp_path / "file" / "out")]) == 2
    assert "cannot be written" in capsys.readouterr().err


@needs_shared
def test_evaluate_end_to_end_on_shared_clips(tmp_path, capsys):
    """The embedded base on two real clips, plus a corrupt file and a missing one: report written, none lost."""
    rows = [
        json.loads(line) for line in (SHARED / "manifest.jsonl").read_text(encoding="utf-8").splitlines()[:2]
    ]
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt not really audio")
    lines = [json.dumps({**row, "audio": str(SHARED / row["audio"])}, ensure_ascii=False) for row in rows]
    lines.append(json.dumps({"id": "corrupt", "audio": "corrupt.wav", "text": "你好"}))
    lines.append(json.dumps({"id": "missing", "audio": "gone.flac", "text": "你好"}))
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "report"
    code = main(
        [
            "evaluate",
            "--model",
            "base",
            "--data",
            str(manifest),
            "--output-dir",
            str(out),
            "--quiet",
            "--beam-size",
            "1",
            "--resamples",
            "200",
        ]
    )
    assert code == 0
    printed = capsys.readouterr()
    assert "| CER | plain |" in printed.out and "2 of 4 rows skipped" in printed.err
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["data"]["scored"] == 2 and report["data"]["skipped"] == 2
    assert {b["id"] for b in report["bad_rows"]} == {"corrupt", "missing"}
    assert report["model"]["name"] == "base" and report["decoding"]["beam_size"] == 1
    assert report["timing"]["real_time_factor"] > 0 and report["timing"]["audio_seconds"] > 4
    predictions = [
        json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(predictions) == 4
    scored = [p for p in predictions if "scores" in p]
    # The report's CER is exactly the predictions' errors over reference characters.
    errors = sum(p["scores"]["plain"]["errors"] for p in scored)
    length = sum(p["scores"]["plain"]["ref_len"] for p in scored)
    assert length == sum(len(row["text"]) for row in rows)
    assert report["metrics"]["plain"]["cer"]["rate"] == pytest.approx(errors / length)
    # The clips are AISHELL "设定二十九度"-style commands: base must get most characters right once numbers match.
    assert report["metrics"]["numbers"]["cer"]["rate"] < 0.5
    assert "## Skipped rows (2)" in (out / "report.md").read_text(encoding="utf-8")


def test_rescore_without_transcribing(tmp_path, capsys):
    from whisper_zh.evaluation import rescore
    from whisper_zh.normalize import TextNormalizer

    predictions = _predictions()
    first = build_evaluation(
        score_predictions(predictions, n_resamples=100),
        None,
        all_predictions=predictions,
        model={"name": "m"},
    )
    paths = first.write(tmp_path / "run")
    again = rescore(paths["report"], n_resamples=100)
    assert again.report["metrics"] == first.report["metrics"]
    assert again.report["model"] == {"name": "m"} and again.report["rescored"]
    assert [r["id"] for r in again.predictions] == ["u1", "u2", "u3", "u4", "u5"]
    # Punctuation kept: u1's 。 becomes an insertion, and u4's "。" reference is now scorable.
    strict = rescore(tmp_path / "run", {"plain": TextNormalizer(punctuation=False)}, n_resamples=100)
    assert strict.report["data"]["scored"] == 4
    cer = strict.report["metrics"]["plain"]["cer"]
    # u1 4 edits (设定二十九度 -> 设定29度。), u2 3, u3 0, u4 2 (。 -> 你好); 6 + 7 + 4 + 1 reference characters.
    assert (cer["substitutions"] + cer["deletions"] + cer["insertions"], cer["ref_len"]) == (9, 18)
    assert (
        main(
            [
                "evaluate",
                "--rescore",
                str(tmp_path / "run"),
                "--output-dir",
                str(tmp_path / "re"),
                "--keep-punctuation",
                "--resamples",
                "100",
            ]
        )
        == 0
    )
    assert "| CER | plain |" in capsys.readouterr().out
    assert (tmp_path / "re" / "report.md").is_file()


def test_every_row_bad_is_one_line_before_the_model_loads(tmp_path, capsys):
    lines = [
        json.dumps({"id": "a", "audio": "gone1.flac", "text": "你好"}).encode(),
        json.dumps({"id": "b", "audio": "gone2.flac", "text": "你好"}).encode(),
        json.dumps({"id": "c", "audio": str(Path(__file__)), "text": " "}).encode(),
        b'{"id": "d", "audio": "x.flac", "text": "\xb2\xe2\xca\xd4"}',  # GBK, not UTF-8
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    # an unknown model proves the rows are judged first: the model would fail to load otherwise
    assert main(["evaluate", "--data", str(manifest), "--model", "no-such-model", "--output-dir", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {manifest}: no utterance could be scored: all 4 row(s) are unusable (2 audio file not found, "
        f"1 empty reference text, 1 line is not valid UTF-8); the first: m.jsonl:1: audio file not found: "
        f"{tmp_path / 'gone1.flac'}"
    )


def test_rescore_takes_either_file_and_keeps_the_original_report(tmp_path, capsys):
    from whisper_zh.evaluation import rescore

    predictions = _predictions()
    first = build_evaluation(
        score_predictions(predictions, n_resamples=100), None, all_predictions=predictions, model={"name": "m"}
    )
    paths = first.write(tmp_path / "run")
    before = {name: path.read_bytes() for name, path in paths.items()}
    again = rescore(paths["predictions"], n_resamples=100)  # the help promised predictions.jsonl
    assert again.report["metrics"] == first.report["metrics"] and again.report["model"] == {"name": "m"}
    for given in (paths["predictions"], paths["report"]):
        code = main(["evaluate", "--rescore", str(given), "--keep-punctuation", "--resamples", "100"])
        assert code == 0
        assert "| CER | plain |" in capsys.readouterr().out
    assert {name: path.read_bytes() for name, path in paths.items()} == before  # never overwritten unasked
    rescored = json.loads((tmp_path / "run" / "rescored" / "report.json").read_text(encoding="utf-8"))
    assert rescored["rescored_from"] == str(paths["predictions"])
    assert rescored["normalisation"]["plain"] != first.report["normalisation"]["plain"]


def test_a_manifest_without_durations_evaluates_with_the_progress_bar(tmp_path, capsys):
    """No `duration` in the rows: the bar has no total, and the run must still go through (it raised TypeError)."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    rows = [json.loads(line) for line in (examples / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(
        json.dumps({"id": r["id"], "audio": str(examples / r["audio"]), "text": r["text"]}, ensure_ascii=False) + "\n"
        for r in rows), encoding="utf-8")
    code = main(["evaluate", "--model", "base", "--data", str(manifest), "--output-dir", str(tmp_path / "out"),
                 "--beam-size", "1", "--resamples", "0"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["data"]["scored"] == 2 and report["metrics"]["plain"]["cer"]["rate"] < 0.2
