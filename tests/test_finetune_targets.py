"""What the fine-tune learns from: prompt-conditioned windows, the product's pack form, punctuated targets,
augmented audio and the topic-spread split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from whisper_zh.data.punctuation import punctuation_rates, restore_punctuation
from whisper_zh.data.splits import stratified_split
from whisper_zh.decoding import DEFAULT_ZH_PROMPT
from whisper_zh.training.augment import Augmenter, add_noise, change_speed
from whisper_zh.training.features import (
    PACK_GAP_SECONDS,
    EpochPlanner,
    ExampleBuilder,
    Featurizer,
    Item,
    WindowDataset,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "aishell1-sample-S0150"
needs_data = pytest.mark.skipif(not (DATA / "manifest.jsonl").is_file(), reason=f"shared clips not found at {DATA}")
PROMPT = DEFAULT_ZH_PROMPT




@needs_data
def test_prompted_window_matches_the_products_decoder_context(base_tokenizer, training_clips):
    """<|startofprev|> + the prompt as the CTranslate2 engine encodes it, then the task prefix; no loss on either."""
    from faster_whisper.tokenizer import Tokenizer
    from tokenizers import Tokenizer as HFTokenizer

    from whisper_zh.models import embedded_model_dir

    builder = ExampleBuilder(base_tokenizer, Featurizer(), prompt=PROMPT)
    example = builder.single(training_clips[0])
    fw = Tokenizer(HFTokenizer.from_file(str(embedded_model_dir() / "tokenizer.json")), True, "transcribe", "zh")
    context = [fw.sot_prev, *fw.encode(PROMPT), *fw.sot_sequence, fw.no_timestamps]  # the engine's prompt
    assert example.decoder_input_ids[: len(context)] == context
    masked = len(context) - 1
    assert example.labels[:masked] == [-100] * masked
    assert base_tokenizer.decode(example.labels[masked:-1]) == training_clips[0].text
    # without the prompt the window is the plain one
    bare = builder.single(training_clips[0], prompted=False)
    assert bare.decoder_input_ids[:4] == list(fw.sot_sequence) + [fw.no_timestamps]
    assert bare.labels[3:] == example.labels[masked:]


@needs_data
def test_product_pack_form_has_no_timestamps_and_the_packing_gap(base_tokenizer, training_clips):
    builder = ExampleBuilder(base_tokenizer, Featurizer(), prompt=PROMPT)
    example = builder.packed(training_clips[:2], timestamps=False)
    t0 = base_tokenizer.convert_tokens_to_ids("<|0.00|>")
    assert not [i for i in example.labels if i >= t0]  # the transcriber decodes packs without timestamps
    assert base_tokenizer.convert_tokens_to_ids("<|notimestamps|>") in example.decoder_input_ids
    text = base_tokenizer.decode([i for i in example.labels if 0 <= i < t0], skip_special_tokens=True)
    assert text == training_clips[0].text + training_clips[1].text
    d0, d1 = (float(c.duration) for c in training_clips[:2])
    end_frame = int((d0 + PACK_GAP_SECONDS + d1) * 100)
    assert np.all(example.input_features[:, end_frame + 2 :] == 0.0)


def test_epoch_plan_drops_the_prompt_on_its_share_and_is_reproducible():
    durations, tokens = [4.0] * 400, [20] * 400
    planner = EpochPlanner(durations, tokens, packing=True, max_seconds=29, seed=3, prompt_dropout=0.3,
                           pack_timestamps=0.5, reserved_tokens=16)
    windows = planner(0)
    assert planner(0) == windows and planner(1) != windows
    prompted = np.mean([w.prompted for w in windows])
    stamped = np.mean([w.timestamps for w in windows])
    assert 0.55 < prompted < 0.85 and 0.3 < stamped < 0.7
    assert all(w.prompted for w in EpochPlanner(durations, tokens, packing=True, max_seconds=29, seed=3)(0))


def test_speed_and_noise_augmentation():
    rng = np.random.default_rng(0)
    audio = (0.1 * np.sin(np.arange(32000) / 8.0)).astype(np.float32)
    assert abs(len(change_speed(audio, 1.1)) - 32000 / 1.1) < 20
    assert abs(len(change_speed(audio, 0.9)) - 32000 / 0.9) < 20
    for brown in (False, True):
        noisy = add_noise(audio, 10.0, rng, brown=brown)
        snr = 10 * np.log10(np.mean(audio.astype(np.float64) ** 2) / np.mean((noisy - audio).astype(np.float64) ** 2))
        assert abs(snr - 10.0) < 0.1
    augmenter = Augmenter(speeds=[0.9, 1.0, 1.1], noise_probability=0.5, seed=7)
    plans = [augmenter.plan(0, i) for i in range(300)]
    assert plans == [augmenter.plan(0, i) for i in range(300)]  # a resumed run draws the same
    assert {p.speed for p in plans} == {0.9, 1.0, 1.1}
    assert 0.4 < np.mean([p.snr_db is not None for p in plans]) < 0.6
    assert all(10.0 <= p.snr_db <= 30.0 for p in plans if p.snr_db is not None)
    assert not Augmenter().active and not Augmenter().plan(0, 0).changes_audio


@needs_data
def test_packing_plans_with_the_perturbed_durations(base_tokenizer, training_clips):
    """A clip slowed to 0.9 is longer: the plan uses that length, and the window holds the changed audio."""
    items = [Item(f"c{i}", c.audio, c.text, c.duration) for i, c in enumerate(training_clips)]
    augmenter = Augmenter(speeds=[0.9], seed=1)
    planner = EpochPlanner([float(c.duration) for c in items], [20] * 3, packing=True, max_seconds=29, seed=1,
                           augmenter=augmenter, pack_timestamps=1.0)
    (window,) = planner(0)
    example = WindowDataset(items, [window], ExampleBuilder(base_tokenizer, Featurizer()))[0]
    t0 = base_tokenizer.convert_tokens_to_ids("<|0.00|>")
    last = max(i for i in example.labels if i >= t0) - t0
    expected = sum(float(c.duration) / 0.9 for c in items) + 2 * PACK_GAP_SECONDS
    assert abs(last * 0.02 - expected) < 0.05


def test_punctuation_is_carried_from_the_hypothesis_to_the_reference():
    assert restore_punctuation("其中有两个是内因的指标", "其中有两个是内音的指标。") == "其中有两个是内因的指标。"
    # numbers written differently: the mark goes after the whole number
    assert restore_punctuation("气温二十九度今天很热", "气温29度,今天很热。") == "气温二十九度，今天很热。"
    # extra and missing words: marks follow the reference character aligned before them
    assert restore_punctuation("我们今天去北京", "我们今天去了北京吗?") == "我们今天去北京？"
    # the reference's own brackets stay; the mark goes after the closing one
    assert restore_punctuation("星巴克咖啡(虹桥店)", "星巴克咖啡,虹桥店。") == "星巴克咖啡(虹桥店)。"
    # an unrelated hypothesis lends only its final mark; an empty one nothing
    assert restore_punctuation("设定三十度", "谢谢观看。") == "设定三十度。"
    assert restore_punctuation("设定三十度", "") == "设定三十度"


def test_punctuation_rates_and_retention():
    base = punctuation_rates(["今天很热。", "明天下雨，后天晴。"])
    assert base.sentence_final == 1.0 and base.per_100_chars == pytest.approx(100 * 3 / 11)
    bare = punctuation_rates(["今天很热", "明天下雨，后天晴。"])
    assert bare.sentence_final == 0.5 and bare.retention(base) == pytest.approx(0.5)


def test_split_spreads_every_block_of_ids_over_test_and_dev():
    ids = [f"W{i:04d}" for i in range(1, 501)]
    split = stratified_split(ids, dev=50, test=100, seed=150)
    assert (len(split.train), len(split.dev), len(split.test)) == (350, 50, 100)
    assert not set(split.train) & set(split.test) and not set(split.dev) & set(split.test)
    assert set(split.train) | set(split.dev) | set(split.test) == set(ids)
    assert split == stratified_split(list(reversed(ids)), dev=50, test=100, seed=150)
    assert split != stratified_split(ids, dev=50, test=100, seed=151)
    for block in range(50):  # each run of 10 consecutive ids (one article, one kind of prompt) gives 2 to test
        members = {f"W{i:04d}" for i in range(10 * block + 1, 10 * block + 11)}
        assert len(members & set(split.test)) == 2 and len(members & set(split.dev)) == 1
