"""Text normalisation: script conversion for output, and the scoring normaliser shared by evaluation and training.

Two things live here:

* :func:`convert_script` turns model output into Simplified (OpenCC ``t2s``) or Traditional (``s2t``) Chinese.
* :class:`TextNormalizer` makes a reference and a hypothesis comparable before they are scored. It is a frozen
  dataclass of switchable steps that always run in this order:

  1. ``width``        NFKC folding: full-width letters, digits and punctuation become half-width (ＡＢ１２ -> AB12).
  2. ``script``       OpenCC conversion, Traditional -> Simplified by default (``"as-is"`` switches it off).
  3. ``lowercase``    Latin letters lower-cased.
  4. ``numbers``      optional number normalisation with cn2an: ``"arabic"`` (二十九 -> 29, 百分之五 -> 5%) or
                      ``"chinese"`` (29 -> 二十九); ``"off"`` by default. 幺 read as a digit (一三幺) counts as 一.
                      It runs before punctuation removal because ``%`` and the decimal point carry meaning for it.
  5. ``punctuation``  Chinese and ASCII punctuation (every Unicode ``P*`` character, plus ``~ ^ | `````) removed;
                      a decimal point between two digits is kept.
  6. ``whitespace``   invisible format characters (BOM, zero-width spaces and joiners) dropped; whitespace next to a
                      CJK character removed, other runs collapsed to one space, so Latin words stay separate words
                      (``"我 爱 Python 3"`` -> ``"我爱python 3"``).
  7. ``letters``      spelled-out letters joined into one word, as AISHELL writes acronyms
                      (``"O P A"`` -> ``"opa"``, ``"S A M S U N G P A Y"`` -> ``"samsungpay"``); single-letter words
                      such as "I" or "a" next to longer words are left alone.

``TextNormalizer.steps`` lists the steps that run, in order, for the report. Normalise references and hypotheses
with the same instance; the normaliser is deterministic and has no state.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any, Literal

import opencc

Script = Literal["simplified", "traditional", "as-is"]
NumberMode = Literal["off", "arabic", "chinese"]

# Scripts written without spaces between words: CJK ideographs (all extensions and compatibility blocks), kana.
CJK_RANGES = (
    "\u3040-\u30ff"  # hiragana, katakana
    "\u3400-\u4dbf"  # extension A
    "\u4e00-\u9fff"  # unified ideographs
    "\uf900-\ufaff"  # compatibility ideographs
    "\U00020000-\U0003134f"  # extensions B-G
)
CJK_CHAR = re.compile(f"[{CJK_RANGES}]")
# Marks that end a sentence (or a clause as strong): where segments, subtitle cues and live commits may end.
SENTENCE_MARKS = "。！？!?；;…"
_SPACE_NEAR_CJK = re.compile(f"(?<=[{CJK_RANGES}])\\s+|\\s+(?=[{CJK_RANGES}])")
_SPACES = re.compile(r"\s+")
_EXTRA_PUNCTUATION = frozenset("~^|`")
# 幺 is how 一 is read inside digit strings (phone and room numbers): 一三幺 is 131.
_YAO_DIGIT = re.compile("(?<=[零〇一二三四五六七八九幺])幺|幺(?=[零〇一二三四五六七八九幺])")
# Digits followed by 万/亿 as written by Whisper (144亿, 1.2万), for the 'arabic' number form.
_DIGITS_WITH_UNIT = re.compile(r"\d+(?:\.\d+)?(?:万亿|亿|万)")
# A run of at least two single Latin letters separated by single spaces: "O P A", "t c u b e".
_SPELLED = re.compile("(?<![A-Za-z0-9])[A-Za-z](?: [A-Za-z](?![A-Za-z0-9]))+")


@lru_cache(maxsize=4)
def _converter(config: str) -> opencc.OpenCC:
    return opencc.OpenCC(config)


def convert_script(text: str, script: Script = "simplified") -> str:
    """Convert ``text`` to the requested Chinese script: 'simplified' (t2s), 'traditional' (s2t) or 'as-is'."""
    if script == "as-is" or not text:
        return text
    if script == "simplified":
        return _converter("t2s").convert(text)
    if script == "traditional":
        return _converter("s2t").convert(text)
    raise ValueError(f"unknown script '{script}': use simplified, traditional or as-is")


_FULL_WIDTH = {",": "，", ".": "。", "?": "？", "!": "！", ":": "：", ";": "；"}
# A half-width mark touching Chinese text (spaces around it ignored). A full stop counts only after a CJK
# character, or after a number that ends a Chinese sentence (涨了3.5.): after a Latin letter it is an
# abbreviation (e.g.), between digits a decimal point.
_ASCII_MARK_NEAR_CJK = re.compile(
    f"(?<=[{CJK_RANGES}])\\s*([,.?!:;])\\s*"
    f"|\\s*([,?!:;])\\s*(?=[{CJK_RANGES}])"
    f"|(?<=\\d)(\\.)\\s*(?=[{CJK_RANGES}]|$)"
)


def chinese_punctuation(text: str) -> str:
    """Full-width marks (，。？！：；) where a half-width one touches Chinese text; ASCII kept inside Latin text
    and numbers (``3.5``, ``e.g.``, ``12:30``). Whisper writes 假语村言,别再拥抱我。 where readers expect
    假语村言，别再拥抱我。 Text without Chinese characters is returned as it is."""
    if not has_cjk(text):
        return text
    return _ASCII_MARK_NEAR_CJK.sub(lambda m: _FULL_WIDTH[m.group(1) or m.group(2) or m.group(3)], text)


def has_cjk(text: str) -> bool:
    """True when ``text`` contains at least one CJK ideograph or kana."""
    return CJK_CHAR.search(text) is not None


def fold_width(text: str) -> str:
    """NFKC: full-width forms to half-width, compatibility characters to their plain form."""
    return unicodedata.normalize("NFKC", text)


def convert_numbers(text: str, mode: NumberMode) -> str:
    """Rewrite numbers with cn2an: 'arabic' (二十九 -> 29, 百分之五 -> 5%), 'chinese' (29 -> 二十九) or 'off'.

    cn2an's 'cn2an' direction also rewrites 一 inside words (一些 -> 1些); applied to reference and hypothesis
    alike that is harmless for scoring, which is the only use of this function.
    """
    if mode == "off" or not text:
        return text
    if mode not in ("arabic", "chinese"):
        raise ValueError(f"unknown number mode '{mode}': use off, arabic or chinese")
    import cn2an  # imported lazily: it loads a few regex tables

    text = _YAO_DIGIT.sub("一", text)
    with warnings.catch_warnings():  # cn2an warns on strings like 万一 that look numeric but are not
        warnings.simplefilter("ignore")
        text = cn2an.transform(text, "cn2an" if mode == "arabic" else "an2cn")
        if mode == "arabic":
            # cn2an turns 一百四十四亿 into 14400000000 but leaves the written form 144亿 alone: expand it too.
            text = _DIGITS_WITH_UNIT.sub(lambda m: _expand_unit(cn2an, m.group(0)), text)
        return text


def _expand_unit(cn2an: Any, number: str) -> str:
    try:
        value = cn2an.cn2an(number, "smart")
    except (ValueError, KeyError):
        return number
    return str(int(value)) if float(value).is_integer() else str(value)


# --numbers: numbers a reader expects in digits. A run of Chinese numerals, with 百分之 before it or a decimal part.
_NUMERALS = "零〇一二三四五六七八九十百千万亿两幺"
_NUMBER = re.compile(f"(百分之)?([{_NUMERALS}]+)(点[零〇一二三四五六七八九幺]+)?")
_DIGIT_STRING = re.compile("[零〇一二三四五六七八九幺]{3,}")  # years, phone and room numbers: read digit by digit
_DIGIT_OF = str.maketrans("零〇一二三四五六七八九幺", "001234567891")
# Units after which even a one-digit number is written in digits (GB/T 15835-2011: measurements)
_MEASURES = ("公斤", "千克", "公里", "公分", "厘米", "毫米", "平方米", "立方米", "米", "克", "度", "%", "℃")
_DATE = re.compile(f"(?:[{_NUMERALS}]+年)?[{_NUMERALS}]+月(?:[{_NUMERALS}]+[日号])?|[{_NUMERALS}]+年[{_NUMERALS}]+月")
_DATE_PART = re.compile(f"[{_NUMERALS}]+")
# Runs that are words, not numbers (千万 "by all means", 万一 "in case"), and approximate numbers (十几, 三四十).
_NUMBER_WORDS = frozenset({"千万", "万万", "万一", "一一", "百万"})
_APPROXIMATE = "几多余来"


def arabic_numbers(text: str) -> str:
    """Numbers a reader expects in Arabic digits rewritten so (``--numbers``): dates (二〇二三年十月一日 ->
    2023年10月1日), percentages (百分之五 -> 5%), decimals, numbers of two numerals or more (三十五公斤 ->
    35公斤, 一百四十四亿 -> 144亿), digit strings (phone numbers) and one-digit measurements (五公斤 -> 5公斤).
    Words made with numerals stay words: 一下, 一些, 一样, 一起, 第一, 两个人, 十几个, 千万.

    Each number is converted by cn2an, as the scoring normaliser converts it, so scoring this text with numbers
    normalised gives what scoring the spoken form gives."""
    import cn2an  # imported lazily: it loads a few regex tables

    def value(span: str) -> str:
        """``span`` in digits, expanded as the scoring normaliser expands a number; "" where cn2an cannot read it."""
        with warnings.catch_warnings():  # cn2an warns on strings like 万一 that look numeric but are not
            warnings.simplefilter("ignore")
            digits = _expand_unit(cn2an, span)
        return digits if digits != span else ""

    def number(match: re.Match[str]) -> str:
        percent, run, decimal = match.group(1), match.group(2), match.group(3) or ""
        after = text[match.end() : match.end() + 3]
        if run in _NUMBER_WORDS or (after and after[0] in _APPROXIMATE):
            return match.group(0)
        if _DIGIT_STRING.fullmatch(run) and not decimal and not percent:
            return run.translate(_DIGIT_OF)
        unit = next((u for u in ("亿", "万") if run.endswith(u) and len(run) > 1), "")
        positional = any(c in "十百千万亿" for c in run)  # 三四 and 七八 are "three or four", not 34
        if not (percent or decimal or after.startswith(_MEASURES) or (positional and len(run) > 1)):
            return match.group(0)  # 十分 (very), 一年, 两个: one numeral before a word stays a word
        if len(run) > 1 and not positional:
            return match.group(0)
        digits = value(run[: len(run) - len(unit)] + decimal)
        return digits + unit + ("%" if percent else "") if digits else match.group(0)

    text = _DATE.sub(lambda m: _DATE_PART.sub(lambda p: value(p.group(0)) or p.group(0), m.group(0)), text)
    return _NUMBER.sub(number, text)


def remove_punctuation(text: str) -> str:
    """Drop Unicode punctuation (categories P*) and ``~ ^ | ` ``.

    Kept: a '.' between two digits (3.5) and an apostrophe between two Latin letters (it's; ’ becomes ').
    """
    out = []
    last = len(text) - 1
    for i, char in enumerate(text):
        if char == "." and 0 < i < last and text[i - 1].isdigit() and text[i + 1].isdigit():
            out.append(char)
        elif char in "'\u2019" and 0 < i < last and _is_latin(text[i - 1]) and _is_latin(text[i + 1]):
            out.append("'")  # an apostrophe inside a word: it's, don't
        elif unicodedata.category(char).startswith("P") or char in _EXTRA_PUNCTUATION:
            # A space keeps Latin words apart ("hello,world"); the whitespace step drops it next to CJK.
            out.append(" ")
        else:
            out.append(char)
    return "".join(out)


def _is_latin(char: str) -> bool:
    return char.isascii() and char.isalpha()


def normalize_whitespace(text: str) -> str:
    """Drop format characters (BOM, zero-width space/joiners); remove whitespace next to CJK characters;
    collapse other whitespace runs to one space; strip."""
    text = "".join(char for char in text if unicodedata.category(char) != "Cf")
    return _SPACES.sub(" ", _SPACE_NEAR_CJK.sub("", text)).strip()


def join_spelled_letters(text: str) -> str:
    """Join runs of single letters separated by spaces: ``"O P A店"`` -> ``"OPA店"``."""
    return _SPELLED.sub(lambda m: m.group(0).replace(" ", ""), text)


@dataclass(frozen=True)
class TextNormalizer:
    """The scoring normaliser: switchable steps, applied in a fixed order (see the module docstring).

    ``TextNormalizer()`` is the default for scoring; ``TextNormalizer(numbers="arabic")`` adds number
    normalisation. Call the instance on a string; ``steps`` says which steps run.
    """

    width: bool = True
    script: Script = "simplified"
    lowercase: bool = True
    numbers: NumberMode = "off"
    punctuation: bool = True
    whitespace: bool = True
    letters: bool = True

    def __post_init__(self) -> None:
        if self.script not in ("simplified", "traditional", "as-is"):
            raise ValueError(f"unknown script '{self.script}': use simplified, traditional or as-is")
        if self.numbers not in ("off", "arabic", "chinese"):
            raise ValueError(f"unknown number mode '{self.numbers}': use off, arabic or chinese")

    @property
    def steps(self) -> list[str]:
        """Names of the steps that run, in order (e.g. ``['width', 'script:simplified', ...]``)."""
        steps = []
        if self.width:
            steps.append("width")
        if self.script != "as-is":
            steps.append(f"script:{self.script}")
        if self.lowercase:
            steps.append("lowercase")
        if self.numbers != "off":
            steps.append(f"numbers:{self.numbers}")
        if self.punctuation:
            steps.append("punctuation")
        if self.whitespace:
            steps.append("whitespace")
        if self.letters:
            steps.append("letters")
        return steps

    def __call__(self, text: str) -> str:
        """Normalise one string."""
        if self.width:
            text = fold_width(text)
        text = convert_script(text, self.script)
        if self.lowercase:
            text = text.lower()
        text = convert_numbers(text, self.numbers)
        if self.punctuation:
            text = remove_punctuation(text)
        if self.whitespace:
            text = normalize_whitespace(text)
        if self.letters:
            text = join_spelled_letters(text)
        return text

    def to_dict(self) -> dict[str, Any]:
        """Settings plus the list of steps that run, for reports."""
        return {**asdict(self), "steps": self.steps}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextNormalizer:
        """Inverse of :meth:`to_dict` (unknown keys such as ``steps`` are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
