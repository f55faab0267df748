"""`whisper-zh evaluate`: transcribe a dataset and score it (CER first), or compare two reports."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from whisper_zh.commands.common import add_model_arguments, decode_options, ensure_writable, load_transcriber
from whisper_zh.commands.ray_jobs import add_ray_arguments, evaluate_with_ray
from whisper_zh.data import FORMATS
from whisper_zh.errors import UsageError
from whisper_zh.metrics import DEFAULT_RESAMPLES

if TYPE_CHECKING:
    from whisper_zh.evaluation import Evaluation


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="transcribe a dataset and report CER (with CI), MER, WER on words, SER",
        description=(
            "Transcribe --data with --model and write report.json, report.md and predictions.jsonl; "
            "or, with --compare A B, compare two reports with a paired bootstrap."
        ),
    )
    p.add_argument(
        "--data",
        help="manifest.jsonl, Kaldi/AISHELL/Common Voice directory, saved HF dataset, "
        "audio folder with .txt transcripts, or a hub dataset id",
    )
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two report.json files (B minus A)")
    p.add_argument(
        "--rescore",
        metavar="RUN",
        help="score an earlier run again without transcribing (new normalisation, seed or diagnostics): its "
        "report.json, predictions.jsonl or directory; writes to --output-dir, by default RUN's folder/rescored",
    )
    p.add_argument(
        "--format", dest="data_format", choices=FORMATS, help="force the data format (default: detect)"
    )
    p.add_argument("--split", help="split to read (AISHELL, Common Voice, HF datasets; default: test)")
    p.add_argument("--config", help="hub dataset configuration, e.g. zh-CN")
    p.add_argument("--limit", type=int, help="evaluate only the first N utterances")
    for column in ("audio", "text", "id", "speaker"):
        p.add_argument(f"--{column}-column", help=f"name of the {column} column (manifests, HF datasets)")
    p.add_argument(
        "--output-dir",
        help="where the report goes (default: out/eval/<model>-<data>; with --rescore, <run>/rescored)",
    )
    add_model_arguments(p)
    norm = p.add_argument_group("scoring normalisation (applied to reference and hypothesis alike)")
    norm.add_argument(
        "--numbers",
        choices=("arabic", "chinese"),
        default="arabic",
        help="number form for the 'numbers' scoring (default: arabic, 二十九 -> 29)",
    )
    norm.add_argument("--no-width", action="store_true", help="skip NFKC full/half-width folding")
    norm.add_argument("--no-script", action="store_true", help="skip Traditional -> Simplified conversion")
    norm.add_argument("--no-lowercase", action="store_true", help="keep Latin letter case")
    norm.add_argument("--keep-punctuation", action="store_true", help="score punctuation too")
    norm.add_argument("--keep-spaces", action="store_true", help="keep whitespace between CJK characters")
    norm.add_argument(
        "--keep-letters", action="store_true", help="do not join spelled-out letters (O P A -> opa)"
    )
    p.add_argument(
        "--diagnostics",
        choices=("plain", "numbers"),
        default="plain",
        help="scoring used for the worst-utterance diffs and confusion pairs (default: plain)",
    )
    p.add_argument(
        "--resamples", type=int, default=DEFAULT_RESAMPLES,
        help="bootstrap resamples (default: 1000; 0: no confidence intervals)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_ray_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    _check_numbers(args)
    if args.compare:
        return _compare(args)
    if args.rescore:
        return _rescore(args)
    if not args.data:
        raise UsageError("give --data (a dataset to evaluate) or --compare A B")
    from whisper_zh.data import load_source
    from whisper_zh.evaluation import check_source, evaluate

    options = decode_options(args)
    scorings = _scorings(args)
    source = load_source(
        args.data,
        args.data_format,
        split=args.split,
        config=args.config,
        limit=args.limit,
        audio_column=args.audio_column,
        text_column=args.text_column,
        id_column=args.id_column,
        speaker_column=args.speaker_column,
    )
    check_source(source)  # every row unusable: say so now, before the model loads
    output_dir = Path(args.output_dir or _default_output_dir(args.model, args.data))
    ensure_writable(output_dir)  # fail now, not after an hour of transcription
    if args.ray is not None:  # many machines: transcribe on Ray, score the same way (whisper_zh.commands.ray_jobs)
        return evaluate_with_ray(args, source, options, scorings, output_dir, _write_report)
    started = time.perf_counter()
    transcriber = load_transcriber(args, options)
    load_seconds = time.perf_counter() - started
    result = evaluate(
        transcriber,
        source,
        options,
        scorings=scorings,
        n_resamples=args.resamples,
        seed=args.seed,
        progress=not args.quiet,
        diagnostics=args.diagnostics,
    )
    result.report["timing"]["model_load_seconds"] = round(load_seconds, 3)
    return _write_report(result, output_dir)


def _check_numbers(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: give a number of utterances of at least 1")
    if args.resamples < (1 if args.compare else 0):
        least = "1 (a paired bootstrap needs resamples)" if args.compare else "0 (0: no confidence intervals)"
        raise UsageError(f"--resamples {args.resamples}: give at least {least}")


def _scorings(args: argparse.Namespace) -> dict:
    from whisper_zh.evaluation import default_scorings

    return default_scorings(
        args.numbers,
        width=not args.no_width,
        script="as-is" if args.no_script else "simplified",
        lowercase=not args.no_lowercase,
        punctuation=not args.keep_punctuation,
        whitespace=not args.keep_spaces,
        letters=not args.keep_letters,
    )


def _write_report(result: Evaluation, output_dir: Path) -> int:
    """Write an Evaluation's report files into ``output_dir`` and print its summary; the exit status."""
    try:
        paths = result.write(output_dir)
    except OSError as exc:
        raise UsageError(f"{output_dir}: cannot write the report ({exc.strerror or exc})") from exc
    _print_summary(result.report, paths)
    return 0


def _print_summary(report: dict, paths: dict) -> None:
    from whisper_zh.data import BadRow, count_kinds
    from whisper_zh.evaluation import metrics_table, summary_line

    print(metrics_table(report))
    print()
    print(summary_line(report))
    data = report["data"]
    if data["skipped"]:
        kinds = count_kinds([BadRow(b["id"], b["reason"], b["where"], b.get("kind", "")) for b in report["bad_rows"]])
        print(
            f"{data['skipped']} of {data['utterances']} rows skipped ({kinds}; listed in report.md):",
            file=sys.stderr,
        )
        for bad in report["bad_rows"][:10]:
            label = bad["where"] if bad["id"].startswith("line ") and bad["where"] else bad["id"]
            print(f"  {label}: {bad['reason']}", file=sys.stderr)
        if len(report["bad_rows"]) > 10:
            print(f"  ... and {len(report['bad_rows']) - 10} more", file=sys.stderr)
    print(f"wrote {paths['report']}, {paths['markdown']}, {paths['predictions']}")


def _rescore(args: argparse.Namespace) -> int:
    from whisper_zh.evaluation import rescore

    result = rescore(
        args.rescore,
        _scorings(args),
        n_resamples=args.resamples,
        seed=args.seed,
        diagnostics=args.diagnostics,
    )
    source = Path(args.rescore)
    run_dir = source if source.is_dir() else source.parent
    output_dir = Path(args.output_dir) if args.output_dir else run_dir / "rescored"  # the original stays as it is
    ensure_writable(output_dir)
    return _write_report(result, output_dir)


def _compare(args: argparse.Namespace) -> int:
    from whisper_zh.evaluation import compare_reports, format_comparison

    comparison = compare_reports(*args.compare, n_resamples=args.resamples, seed=args.seed)
    print(format_comparison(comparison))
    return 0


def _default_output_dir(model: str, data: str) -> Path:
    def slug(text: str) -> str:
        path = Path(text)
        name = (
            path.parent.name if path.name in ("manifest.jsonl", "report.json") else (path.stem or path.name)
        )
        return re.sub(r"[^\w.-]+", "_", name).strip("_") or "data"

    return Path("out") / "eval" / f"{slug(model)}-{slug(data)}"
