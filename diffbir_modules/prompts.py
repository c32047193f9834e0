"""The official default prompts and the official text-encoder tokenisation (77-token truncation).

Prompts and CFG per version (DiffBIR's inference.py of each release):
- v1: empty prompts, cfg 1 (no negative pass);
- v2 (ECCV): positive '', negative 'low quality, blurry, low-resolution, noisy, unsharp, weird
  textures', cfg 4;
- v2.1: the long DEFAULT_POS_PROMPT / DEFAULT_NEG_PROMPT of main's inference.py, cfg 6 (the CLI
  default; the README commands and the gradio demo use 8). The positive prompt is
  ``", ".join([caption, DEFAULT_POS_PROMPT])`` without empty parts.

Tokenisation: the official OpenCLIP tokenizer encodes ``[SOT] + tokens + [EOT]``, zero-pads to 77 and
truncates longer prompts to 77 with the last token forced to EOT (one 77-token chunk, nothing
after token 75 reaches the model). ComfyUI's SD2 tokenizer instead splits long prompts into
several 77-token chunks (starting a new chunk early rather than splitting a short word) and
concatenates their encodings; it also reads ``(text:1.2)`` weights and ``embedding:name``.
``official_tokens`` tokenises the whole prompt with the same BPE vocabulary as plain text and builds
the official single chunk (checked id for id against the official tokenizer).
"""

from __future__ import annotations

import html
import logging
import re

from .presets import VERSION_DEFAULTS

# version -> (positive, negative, cfg, the official sampler, steps), from the one table in presets.py
DEFAULTS = {v: (d.positive, d.negative, d.cfg, d.sampler_name, d.steps) for v, d in VERSION_DEFAULTS.items()}


def default_prompts(version: str, caption: str = "") -> tuple[str, str, float]:
    """(positive, negative, cfg) of ``version``; ``caption`` goes in front of the positive prompt as
    the official loop joins them (``", "``, empty parts dropped)."""
    if version not in DEFAULTS:
        raise ValueError(f"unknown DiffBIR version {version!r}; expected one of {', '.join(DEFAULTS)}")
    positive, negative, cfg, _, _ = DEFAULTS[version]
    positive = ", ".join(text for text in (caption.strip(), positive) if text)
    return positive, negative, cfg


def valid_unicode(text: str) -> str:
    """The prompt with lone UTF-16 surrogates (half an emoji, from a bad copy-paste or an API client;
    the tokenizer cannot take them and raised a TypeError) replaced by U+FFFD, and one warning."""
    fixed = str(text).encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if fixed != text:
        logging.warning("DiffBIR Text Encode: the prompt holds broken characters (lone surrogates, half of an emoji); "
                        "they were replaced by U+FFFD. Retype those characters for the prompt you meant.")
    return fixed


def official_text_cleanup(text: str) -> str:
    """What OpenCLIP's tokenizer does to a prompt before BPE, minus ``ftfy.fix_text`` (ftfy is not a
    dependency; it only changes broken unicode / mojibake): HTML entities unescaped twice, whitespace
    runs collapsed to one space, stripped. Lower-casing is left to the tokenizer (both lower-case)."""
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def _sub_tokenizer(clip, key: str):
    tokenizer = getattr(clip, "tokenizer", None)
    for name in (f"clip_{key}", key):
        sub = getattr(tokenizer, name, None)
        if sub is not None and hasattr(sub, "max_length"):
            return sub
    raise ValueError(f"cannot find the '{key}' tokenizer of this CLIP model ({type(tokenizer).__name__}) to truncate")


def _is_token(item, token_id) -> bool:
    token = item[0]
    return isinstance(token, int) and token == token_id


def truncate_chunks(chunks: list, start_token, end_token, pad_token, max_length: int) -> list:
    """ComfyUI's list of token chunks -> one chunk as the official tokenizer makes it: the start token,
    the first ``max_length - 2`` content tokens of the whole prompt, the end token, padding."""
    content = []
    for chunk in chunks:
        begin = 1 if chunk and start_token is not None and _is_token(chunk[0], start_token) else 0
        end = len(chunk)
        for j in range(begin, len(chunk)):
            if end_token is not None and _is_token(chunk[j], end_token):
                end = j
                break
        content.extend(chunk[begin:end])
    width = len(chunks[0][0]) if chunks and chunks[0] else 2

    def item(token):
        return (token, 1.0) if width == 2 else (token, 1.0, 0)

    room = max_length - (start_token is not None) - (end_token is not None)
    out = ([item(start_token)] if start_token is not None else []) + content[:room]
    if end_token is not None:
        out.append(item(end_token))
    out.extend(item(pad_token) for _ in range(max_length - len(out)))
    return [out]


def _plain_chunks(sub, text: str, truncate: bool) -> list:
    """The whole prompt through the BPE tokenizer in one go (as OpenCLIP does; no weight syntax, no
    embeddings), cut into chunks of max_length - 2 tokens, or only the first one when ``truncate``."""
    encoded = sub.tokenizer(text, verbose=False)["input_ids"]
    content = [int(t) for t in encoded[sub.tokens_start:] if t not in (sub.start_token, sub.end_token)]
    room = sub.max_length - (sub.start_token is not None) - (sub.end_token is not None)
    pieces = [content[i:i + room] for i in range(0, max(len(content), 1), room)]
    if truncate:
        pieces = pieces[:1]
    chunks = []
    for piece in pieces:
        chunk = ([sub.start_token] if sub.start_token is not None else []) + piece
        if sub.end_token is not None:
            chunk.append(sub.end_token)
        chunk.extend([sub.pad_token] * (sub.max_length - len(chunk)))
        chunks.append([(token, 1.0) for token in chunk])
    return chunks


def official_tokens(clip, text: str, truncate: bool = True, weights: bool = False, cleanup: bool = True) -> dict:
    """Tokens for ``clip.encode_from_tokens_scheduled`` made the official way: OpenCLIP's text clean-up
    when ``cleanup``; without ``weights`` the whole prompt goes through the BPE tokenizer as plain text
    (parentheses, 'embedding:' and backslashes are just text, as officially); with ``weights``
    ComfyUI's own parser reads them. ``truncate``: one chunk of the first 75 tokens, as the official
    tokenizer; otherwise further 77-token chunks carry the rest (ComfyUI's way of counting every token)."""
    text = valid_unicode(text)
    if cleanup:
        text = official_text_cleanup(text)
    if not weights:
        keys = clip.tokenize("").keys()
        return {key: _plain_chunks(_sub_tokenizer(clip, key), text, truncate) for key in keys}
    tokens = clip.tokenize(text)
    if not truncate:
        return tokens
    out = {}
    for key, chunks in tokens.items():
        if not isinstance(chunks, list) or not chunks:
            out[key] = chunks
            continue
        sub = _sub_tokenizer(clip, key)
        out[key] = truncate_chunks(chunks, sub.start_token, sub.end_token, sub.pad_token, sub.max_length)
    return out
