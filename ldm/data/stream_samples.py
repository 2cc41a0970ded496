"""One raw webdataset sample (``{"__key__", "__url__", "jpg": bytes, "txt": bytes, "json": bytes, ...}``) → its
caption, metadata and decoded image, with the reasons a sample is dropped counted.

LAION shards as written by img2dataset hold ``<key>.jpg`` (or ``.png`` / ``.webp``), ``<key>.txt`` (the caption)
and ``<key>.json`` (``caption``, ``original_width``, ``original_height``, and in LAION-5B subsets ``pwatermark``,
``punsafe``, ...).
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")

#: Why a sample was skipped as broken (the others are filtered on purpose, see :class:`SampleFilters`).
CORRUPT_REASONS = ("bad_shard", "no_image", "no_caption", "bad_image", "bad_json")


class SkipCounter:
    """Counts skipped samples by reason; the first skip of each (shard, reason) is logged with the shard's name,
    later ones only counted. ``counts`` is cumulative over a worker's life."""

    def __init__(self, counts: dict[str, int] | None = None):
        self.counts: Counter[str] = Counter(counts or {})
        self._logged: set[tuple[str, str]] = set()

    def skip(self, reason: str, shard: str, key: str = "", detail: str = "") -> None:
        self.counts[reason] += 1
        if reason in CORRUPT_REASONS and (shard, reason) not in self._logged:
            self._logged.add((shard, reason))
            logger.warning("skipping sample %r of shard %s (%s%s); further %s samples of this shard are only counted",
                           key, shard, reason, f": {detail}" if detail else "", reason)

    def tar_error(self, error: Exception) -> bool:
        """webdataset ``handler``: count an unreadable shard or tar member and go on (returns True)."""
        shard = next((a for a in reversed(error.args) if isinstance(a, str) and a), "?")
        self.skip("bad_shard", shard, detail=f"{type(error).__name__}: {error.args[0] if error.args else ''}")
        return True


def _number(meta: dict[str, Any], name: str) -> float | None:
    """``meta[name]`` as a float, None when absent, null or NaN (img2dataset writes null for unknown scores)."""
    value = meta.get(name)
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def has_original_size(meta: dict[str, Any]) -> bool:
    """Whether the json gives the original image size (``original_width`` and ``original_height``)."""
    return _number(meta, "original_width") is not None and _number(meta, "original_height") is not None


@dataclass
class SampleFilters:
    """Drops samples on purpose (counted under the filter's name, not as corrupt).

    :param min_size: drop when the shorter side is below it; the original image's size from the json
        (``original_width`` / ``original_height``) when present, else the decoded image's.
    :param max_aspect_ratio: drop when ``max(w, h) / min(w, h)`` exceeds it.
    :param max_pwatermark: drop when the json's ``pwatermark`` exceeds it (kept when the field is absent).
    :param p_unsafe_threshold: drop when the json's ``punsafe`` is at least it (kept when absent).
    :param filter_words: drop when the lower-cased caption contains one of these (lower-cased) words.
    """

    min_size: int | None = None
    max_aspect_ratio: float | None = None
    max_pwatermark: float | None = None
    p_unsafe_threshold: float | None = None
    filter_words: tuple[str, ...] = field(default_factory=tuple)

    def drop_before_decoding(self, caption: str, meta: dict[str, Any]) -> str | None:
        """The filter that rejects the sample from its caption and json alone, or None."""
        watermark, unsafe = _number(meta, "pwatermark"), _number(meta, "punsafe")
        if self.max_pwatermark is not None and watermark is not None and watermark > self.max_pwatermark:
            return "pwatermark"
        if self.p_unsafe_threshold is not None and unsafe is not None and unsafe >= self.p_unsafe_threshold:
            return "punsafe"
        if self.filter_words:
            lowered = caption.lower()
            if any(word in lowered for word in self.filter_words):
                return "filter_word"
        if has_original_size(meta):
            return self.drop_for_size(int(meta["original_width"]), int(meta["original_height"]))
        return None

    def drop_for_size(self, width: int, height: int) -> str | None:
        """``"min_size"`` / ``"aspect_ratio"`` when a ``width × height`` image is rejected, else None."""
        if self.min_size is not None and min(width, height) < self.min_size:
            return "min_size"
        if self.max_aspect_ratio is not None and max(width, height) > self.max_aspect_ratio * min(width, height):
            return "aspect_ratio"
        return None


@dataclass
class ParsedSample:
    """A raw sample's parts: ``image_bytes`` (undecoded), ``caption``, ``meta`` (the json, or {})."""

    key: str
    shard: str
    image_bytes: bytes
    caption: str
    meta: dict[str, Any]


def parse_sample(raw: dict[str, Any], image_key: str | None, counter: SkipCounter) -> ParsedSample | None:
    """The parts of ``raw``, or None (counted) when the image, the caption or a readable json is missing.

    The image is ``raw[image_key]``, or the first of ``jpg/jpeg/png/webp`` when ``image_key`` is None; the caption
    is the ``txt`` member, else the json's ``caption`` field.
    """
    key, shard = str(raw.get("__key__", "")), str(raw.get("__url__", "?"))
    meta: dict[str, Any] = {}
    if "json" in raw:
        try:
            meta = json.loads(raw["json"])
        except ValueError as error:
            counter.skip("bad_json", shard, key, str(error))
            return None
    keys = (image_key,) if image_key else IMAGE_KEYS
    image_bytes = next((raw[k] for k in keys if k in raw), None)
    if image_bytes is None:
        counter.skip("no_image", shard, key, f"no {'/'.join(keys)} member")
        return None
    if "txt" in raw:
        caption = raw["txt"].decode("utf-8", errors="replace").strip()
    elif isinstance(meta.get("caption"), str):
        caption = meta["caption"].strip()
    else:
        counter.skip("no_caption", shard, key, "no txt member and no json caption")
        return None
    return ParsedSample(key, shard, image_bytes, caption, meta if isinstance(meta, dict) else {})


def decode_image(sample: ParsedSample, counter: SkipCounter) -> Image.Image | None:
    """The sample's image in RGB, fully read (a truncated file fails here), or None (counted)."""
    try:
        with Image.open(io.BytesIO(sample.image_bytes)) as image:
            image.load()
            return image.convert("RGB")
    except Exception as error:  # PIL raises many types for corrupt data
        counter.skip("bad_image", sample.shard, sample.key, f"{type(error).__name__}: {error}")
        return None
