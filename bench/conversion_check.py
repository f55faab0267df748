"""Conversion check: is the Transformers copy of the embedded base the same model as the CTranslate2 original?

On N shared AISHELL-1 clips (spread over the manifest), all greedy, prompt <|startoftranscript|><|zh|>
<|transcribe|><|notimestamps|>, at most 224 new tokens:

  A  Transformers (CT2 float16 -> HF float32 conversion), features from WhisperFeatureExtractor
  B  CTranslate2 (original model.bin, compute_type float32), the SAME features as A
  C  CTranslate2 float32, features computed as faster-whisper does

A vs B isolates the conversion: identical token ids expected, and the maximum absolute logit difference is
reported (B's logits at every generated step vs A's teacher-forced logits on the same tokens; tokens suppressed by
CTranslate2 are excluded). B vs C isolates the feature pipeline: WhisperFeatureExtractor pads the waveform to 30 s
and then takes the log-mel (padding = log-mel of silence, clamped at max-8 dB); faster-whisper takes the log-mel
of the unpadded audio and then pads the mel frames with zeros. Also checked: CT2 fp16 -> HF -> CT2 fp16 gives back
a bit-identical model.bin variable set.

Run: .venv/bin/python bench/conversion_check.py [--clips 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import ctranslate2
import numpy as np
import torch
from faster_whisper.audio import pad_or_trim
from faster_whisper.feature_extractor import FeatureExtractor

from whisper_zh.audio import load_audio
from whisper_zh.convert import ct2_to_transformers_dir, read_ct2_model_bin, transformers_to_ct2_dir
from whisper_zh.hf import load_transformers_whisper
from whisper_zh.metrics import cer
from whisper_zh.models import embedded_model_dir
from whisper_zh.normalize import TextNormalizer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "aishell1-sample-S0150"
PROMPT = [50258, 50260, 50359, 50363]  # <|startoftranscript|><|zh|><|transcribe|><|notimestamps|>
EOT = 50257
MAX_NEW_TOKENS = 224  # Transformers' cap, matching CTranslate2's
CAPPED = 200  # a transcript this long on a <15 s clip is a repetition loop that ran into the cap


def faster_whisper_features(extractor: FeatureExtractor, audio: np.ndarray) -> np.ndarray:
    """faster-whisper's first 30 s window: log-mel of the unpadded audio, last frame dropped, zero-padded to 3000."""
    mel = extractor(audio)
    content = mel[:, : mel.shape[-1] - 1]
    return pad_or_trim(content[:, :3000])[None].astype(np.float32)


def ct2_generate(model: ctranslate2.models.Whisper, features: np.ndarray):
    view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features))
    # max_length=448 lets CTranslate2 generate at most ~224 new tokens (measured: max_length=8 gives 4 tokens).
    return model.generate(view, [PROMPT], beam_size=1, max_length=448, return_logits_vocab=True)[0]


def same_tokens(a: list[int], b: list[int]) -> bool:
    """Equal, or equal up to the shorter one when both stopped at their (different) caps inside a loop."""
    n = min(len(a), len(b))
    return a == b or (n >= CAPPED and a[:n] == b[:n])


def strip(ids: list[int]) -> list[int]:
    ids = list(ids)
    if ids[: len(PROMPT)] == PROMPT:
        ids = ids[len(PROMPT) :]
    while ids and ids[-1] == EOT:
        ids.pop()
    return ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not (DATA / "manifest.jsonl").is_file():
        print(f"shared data not found at {DATA}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in (DATA / "manifest.jsonl").read_text(encoding="utf-8").splitlines() if line]
    step = max(1, len(rows) // args.clips)
    rows = rows[::step][: args.clips]

    ct2_dir = embedded_model_dir()
    with tempfile.TemporaryDirectory(prefix="conversion-check-") as tmp:
        start = time.perf_counter()
        hf_dir = ct2_to_transformers_dir(ct2_dir, Path(tmp) / "hf")
        t_to_hf = time.perf_counter() - start
        start = time.perf_counter()
        back = transformers_to_ct2_dir(hf_dir, Path(tmp) / "ct2", "float16")
        t_to_ct2 = time.perf_counter() - start
        original, again = read_ct2_model_bin(ct2_dir / "model.bin").variables, read_ct2_model_bin(back / "model.bin").variables
        same = sum(
            1 for k in original if k in again and original[k].dtype == again[k].dtype and np.array_equal(original[k], again[k])
        )
        print(f"CT2 fp16 -> HF fp32: {t_to_hf:.1f} s; HF -> CT2 fp16: {t_to_ct2:.1f} s; "
              f"round trip: {same}/{len(original)} variables bit-identical ({len(again)} in the new model.bin)")

        model, processor = load_transformers_whisper(hf_dir)
        ct2 = ctranslate2.models.Whisper(str(ct2_dir), compute_type="float32", intra_threads=args.threads)
        fw_extractor = FeatureExtractor(feature_size=80)
        tokenizer = processor.tokenizer

        normalizer = TextNormalizer(numbers="arabic")
        same_ids = same_text_pipeline = same_scored_pipeline = 0
        max_logit_diff = 0.0
        t_hf = t_ct2 = 0.0
        refs, hyps_b, hyps_c = [], [], []
        for row in rows:
            audio = load_audio(DATA / row["audio"])
            f_hf = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="np").input_features
            f_fw = faster_whisper_features(fw_extractor, audio)

            start = time.perf_counter()
            with torch.no_grad():
                a_ids = strip(model.generate(torch.from_numpy(f_hf), language="zh", task="transcribe", num_beams=1,
                                             do_sample=False, max_new_tokens=MAX_NEW_TOKENS)[0].tolist())
            t_hf += time.perf_counter() - start
            start = time.perf_counter()
            b = ct2_generate(ct2, f_hf)
            t_ct2 += time.perf_counter() - start
            b_ids = strip(b.sequences_ids[0])
            c_ids = strip(ct2_generate(ct2, f_fw).sequences_ids[0])

            # Logits: B's at each generated step vs A's teacher-forced on B's tokens.
            ct2_logits = np.stack([np.asarray(x) for x in b.logits[0]])
            with torch.no_grad():
                hf_logits = model(input_features=torch.from_numpy(f_hf),
                                  decoder_input_ids=torch.tensor([PROMPT + b_ids])).logits[0].numpy()
            hf_steps = hf_logits[len(PROMPT) - 1 : len(PROMPT) - 1 + len(ct2_logits)]
            kept = ct2_logits > -1e30  # CTranslate2 writes -FLT_MAX for suppressed tokens
            diff = float(np.abs(ct2_logits[kept] - hf_steps[kept]).max())
            max_logit_diff = max(max_logit_diff, diff)

            same_ids += same_tokens(a_ids, b_ids)
            text_a, text_b, text_c = (tokenizer.decode(i, skip_special_tokens=True) for i in (a_ids, b_ids, c_ids))
            same_text_pipeline += text_b == text_c
            same_scored_pipeline += normalizer(text_b) == normalizer(text_c)
            refs.append(row["text"])
            hyps_b.append(text_b)
            hyps_c.append(text_c)
            flag = ("" if same_tokens(a_ids, b_ids) else " ENGINES DIFFER") + ("" if text_b == text_c else " PIPELINES DIFFER")
            print(f"{row['id']} logit diff {diff:.2e} | HF: {text_a} | CT2: {text_b} | CT2+fw features: {text_c}{flag}")

    n = len(rows)
    cer_b, cer_c = cer(refs, hyps_b, normalizer=normalizer), cer(refs, hyps_c, normalizer=normalizer)
    print()
    print(f"clips: {n}, greedy, max {MAX_NEW_TOKENS} new tokens, {args.threads} threads")
    print(f"conversion (A: HF float32 vs B: CT2 float32, same features): identical token ids {same_ids}/{n}, "
          f"max |logit diff| {max_logit_diff:.2e}")
    print(f"feature pipeline (B: HF features vs C: faster-whisper features, both CT2 float32): identical transcripts "
          f"{same_text_pipeline}/{n}, differing {n - same_text_pipeline} "
          f"({n - same_scored_pipeline} still differ after the scoring normaliser); "
          f"CER {cer_b.rate * 100:.2f}% vs {cer_c.rate * 100:.2f}% (TextNormalizer(numbers='arabic'))")
    print(f"decode time HF/CT2 (greedy, same features): {t_hf:.1f} s / {t_ct2:.1f} s = {t_hf / max(t_ct2, 1e-9):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
