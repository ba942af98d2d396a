"""Tokenizer stage: one `tokenizers.Tokenizer` for the artifact, whatever files the checkpoint has.

In order of preference:
- `tokenizer.json`, as saved by a fast tokenizer (padding and truncation switched off);
- `vocab.json` + `merges.txt`: byte-level BPE, as RoBERTa ships;
- `vocab.txt`, read by its content: a WordPiece vocabulary (BERT), one token per character
  (proteins: AntiBERTy, ESM), or reaction SMILES (atoms and bonds, split by the usual SMILES regex);
- anything transformers can convert to a fast tokenizer (a SentencePiece model, with the
  `sentencepiece` package installed).

The special tokens' names come from `special_tokens_map.json` / `tokenizer_config.json`, else from the
family's defaults; each must exist in the vocabulary. The predictor never rebuilds any of this: it
loads the `tokenizer.json` written into the artifact.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import SourceError
from ..families import SpecialTokens
from .source import ResolvedSource

# The SMILES pattern of Schwaller et al. (Molecular Transformer) that rxnmapper tokenizes with, plus
# rxnfp's additions (three-digit ring closures, `|`). Characters it does not match become [UNK] here,
# where those tools drop them silently.
SMILES_PATTERN = (r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|\/|:|~|@|\?|>>?|\*|\$"
                  r"|\%\([0-9]{3}\)|\%[0-9]{2}|[0-9]|\|)")
_UNUSED = re.compile(r"\[unused\d+\]|<null_\d+>")  # placeholder rows, never text
log = logging.getLogger("mlm_export")
ROLES = tuple(f.name for f in fields(SpecialTokens))  # mask, cls, sep, pad, unk: the manifest's ROLES
_KEYS = {"mask": ("mask_token",), "cls": ("cls_token", "bos_token"), "sep": ("sep_token", "eos_token"),
         "pad": ("pad_token",), "unk": ("unk_token",)}
# what each role is called across the families, tried when the checkpoint's files do not say
CANDIDATES = {"mask": ("[MASK]", "<mask>"), "cls": ("[CLS]", "<s>", "<cls>"), "sep": ("[SEP]", "</s>", "<eos>"),
              "pad": ("[PAD]", "<pad>"), "unk": ("[UNK]", "<unk>")}


@dataclass(frozen=True)
class LoadedTokenizer:
    tokenizer: Any            # tokenizers.Tokenizer
    specials: SpecialTokens   # names by role
    ids: dict[str, int]       # ids by role
    scheme: str               # tokenizer.json | bpe | wordpiece | characters | smiles | converted

    @property
    def char_level(self) -> bool:
        return self.scheme == "characters"

    @property
    def special_id_list(self) -> tuple[int, ...]:
        """The ids of the special tokens, sorted: the manifest's all_special_ids and the scoring bias."""
        return tuple(sorted(set(self.ids.values())))


def load_tokenizer(source: ResolvedSource) -> LoadedTokenizer:
    """The checkpoint's tokenizer, with padding and truncation off: the predictor pads itself."""
    from tokenizers import Tokenizer

    model_dir = source.model_dir
    if (model_dir / "tokenizer.json").is_file():
        try:
            tok, scheme = Tokenizer.from_file(str(model_dir / "tokenizer.json")), "tokenizer.json"
        except Exception as exc:  # the Rust side raises a bare Exception
            raise SourceError(f"{model_dir / 'tokenizer.json'} is not a tokenizer file the `tokenizers` "
                              f"library can read ({exc}); re-save it, or remove it to build one from the "
                              "vocabulary files") from exc
        specials = special_token_names(source, tok.get_vocab(with_added_tokens=True))
        _mask_swallows_the_space_before(tok, specials.mask, model_dir)
    elif (model_dir / "vocab.json").is_file() and (model_dir / "merges.txt").is_file():
        vocab = _read_json(model_dir / "vocab.json")
        specials = special_token_names(source, vocab)
        tok, scheme = _byte_level_bpe(model_dir, specials), "bpe"
    elif source.vocab_file is not None:
        vocab = _read_vocab(source.vocab_file)
        specials = special_token_names(source, vocab)
        tok, scheme = _from_vocab_txt(source, specials, vocab)
    else:
        fast = _converted(model_dir)
        tok, scheme = fast.backend_tokenizer, "converted"
        specials = special_token_names(source, tok.get_vocab(with_added_tokens=True), fast.special_tokens_map)
    tok.no_truncation()
    tok.no_padding()
    if tok.post_processor is None:  # a tokenizer.json saved without its template: the model never saw that
        tok.post_processor = _template(specials, tok.get_vocab())
        log.warning("the tokenizer of %s adds no %s ... %s around a sequence; mlm-export adds them, as the "
                    "model was trained with them", source.spec.location, specials.cls, specials.sep)
    ids: dict[str, int] = {}
    for role in ROLES:
        name = getattr(specials, role)
        token_id = tok.token_to_id(name)
        if token_id is None:
            raise SourceError(f"the tokenizer of {source.spec.location} has no {name!r} token (its {role} "
                              "token); name it in special_tokens_map.json")
        ids[role] = token_id
    return LoadedTokenizer(tok, specials, ids, scheme)


def special_token_names(source: ResolvedSource, vocab: dict[str, int], named: dict | None = None) -> SpecialTokens:
    """Names by role: as the checkpoint's tokenizer files name them, else the first of the family's
    candidates that the vocabulary holds (ALBERT checkpoints come with `<pad>` or with `[PAD]`)."""
    found: dict[str, str] = {}
    sources = [_read_json(source.model_dir / name) for name in ("special_tokens_map.json", "tokenizer_config.json")]
    for data in [*sources, named or {}]:
        for role, keys in _KEYS.items():
            for key in keys:
                value = data.get(key)
                value = value.get("content") if isinstance(value, dict) else value
                if role not in found and isinstance(value, str) and value:
                    found[role] = value
    defaults = source.family.specials
    names = {}
    for role in ROLES:
        candidates = (found[role],) if role in found else (getattr(defaults, role), *CANDIDATES[role])
        names[role] = next((c for c in candidates if c in vocab), candidates[0])
    return SpecialTokens(**names)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SourceError(f"{path} is not a readable JSON file ({str(exc)[:200]})") from exc
    return data if isinstance(data, dict) else {}


def _read_vocab(path: Path) -> dict[str, int]:
    try:
        tokens = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read {path} as UTF-8 text ({exc})") from exc
    return {token: index for index, token in enumerate(tokens)}


def vocab_scheme(vocab: dict[str, int], specials: SpecialTokens) -> str:
    """What a vocab.txt holds: WordPiece pieces, SMILES atoms and bonds, or single characters."""
    named = {getattr(specials, role) for role in ROLES}
    plain = [t for t in vocab if t and t not in named and not _UNUSED.fullmatch(t)]
    if not plain or any(t.startswith("##") for t in plain):
        return "wordpiece"
    smiles = re.compile(SMILES_PATTERN)
    atoms = [t for t in plain if smiles.fullmatch(t)]
    # bracket atoms ([nH], [C@@H]), two-letter halogens or a reaction arrow tell SMILES from letters
    if len(atoms) >= 0.9 * len(plain) and any(len(t) > 1 for t in atoms):
        return "smiles"
    single = [t for t in plain if not _bracketed(t)]
    if single and sum(len(t) == 1 for t in single) >= 0.9 * len(single):
        return "characters"
    return "wordpiece"


def _bracketed(token: str) -> bool:
    return len(token) > 2 and ((token[0], token[-1]) in (("[", "]"), ("<", ">")))


def _from_vocab_txt(source: ResolvedSource, specials: SpecialTokens, vocab: dict[str, int]) -> tuple[Any, str]:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    scheme = vocab_scheme(vocab, specials)
    missing = [getattr(specials, r) for r in ROLES if getattr(specials, r) not in vocab]
    if missing:
        raise SourceError(f"{source.vocab_file} lacks the special tokens {missing}; name the model's own "
                          "in special_tokens_map.json")
    tok = Tokenizer(models.WordPiece(vocab, unk_token=specials.unk, max_input_chars_per_word=100))
    lower = scheme == "wordpiece" and _lowercase(source, vocab, specials)
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=lower)
    if scheme == "wordpiece":
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
    else:  # one token per character, or per SMILES atom/bond; sequences may be written unspaced
        piece = Regex(".") if scheme == "characters" else Regex(SMILES_PATTERN)
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.Split(piece, "isolated")])
        tok.decoder = decoders.Fuse()
    _finish(tok, specials, vocab)
    return tok, scheme


def _lowercase(source: ResolvedSource, vocab: dict[str, int], specials: SpecialTokens) -> bool:
    setting = _read_json(source.model_dir / "tokenizer_config.json").get("do_lower_case")
    if isinstance(setting, bool):
        return setting
    named = {getattr(specials, role) for role in ROLES}
    cased = sum(1 for t in vocab if t not in named and not _bracketed(t) and t != t.lower())
    return cased < 0.01 * len(vocab)  # a cased vocabulary would lose its capitals


def _byte_level_bpe(model_dir: Path, specials: SpecialTokens) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    try:
        tok = Tokenizer(models.BPE.from_file(str(model_dir / "vocab.json"), str(model_dir / "merges.txt")))
    except Exception as exc:
        raise SourceError(f"cannot read the BPE vocabulary in {model_dir} ({exc})") from exc
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    _finish(tok, specials, tok.get_vocab())
    return tok


def _template(specials: SpecialTokens, vocab: dict[str, int]) -> Any:
    from tokenizers import processors

    if specials.cls not in vocab or specials.sep not in vocab:
        raise SourceError(f"the vocabulary has no {specials.cls!r} or {specials.sep!r} token to put around a "
                          "sequence; name the model's own in special_tokens_map.json")
    return processors.TemplateProcessing(
        single=f"{specials.cls} $A {specials.sep}", pair=f"{specials.cls} $A {specials.sep} $B:1 {specials.sep}:1",
        special_tokens=[(specials.cls, vocab[specials.cls]), (specials.sep, vocab[specials.sep])])


def _finish(tok: Any, specials: SpecialTokens, vocab: dict[str, int]) -> None:
    """`CLS text SEP` around each sequence; the mask token swallows the space before it, as in transformers."""
    from tokenizers import AddedToken

    tok.post_processor = _template(specials, vocab)
    tok.add_special_tokens([AddedToken(getattr(specials, role), lstrip=role == "mask" and _is_bpe(tok),
                                       normalized=False) for role in ROLES])


def _mask_swallows_the_space_before(tok: Any, mask: str, model_dir: Path) -> None:
    """Give the mask token the `lstrip` transformers gives it, so that "a [MASK]" tokenizes as the
    fill-mask pipeline tokenizes it (`▁a [MASK]` or `▁a ▁ [MASK]`: other inputs, other predictions).

    transformers takes the flag from tokenizer_config.json's `added_tokens_decoder`, else from a
    `mask_token` object in special_tokens_map.json or tokenizer_config.json; a mask named by a bare
    string keeps tokenizer.json's flag; a mask nobody names gets the tokenizer class's default, which
    swallows the space wherever a word's leading space belongs to its first token (SentencePiece's
    `▁`, byte-level BPE's `Ġ`: the ALBERT, XLM-R, CamemBERT and RoBERTa classes).
    """
    from tokenizers import AddedToken

    saved = _read_json(model_dir / "tokenizer.json")
    entry = next((t for t in saved.get("added_tokens", []) if t.get("content") == mask), None)
    if entry is None:
        return
    config = _read_json(model_dir / "tokenizer_config.json")
    decoder = config.get("added_tokens_decoder")
    declared = [t for t in decoder.values() if isinstance(t, dict) and t.get("content") == mask] \
        if isinstance(decoder, dict) else []
    named = [m for m in (config.get("mask_token"), _read_json(model_dir / "special_tokens_map.json").get("mask_token"))
             if m is not None]
    if declared:
        lstrip = bool(declared[0].get("lstrip"))
    elif any(isinstance(m, dict) for m in named):
        lstrip = bool(next(m for m in named if isinstance(m, dict)).get("lstrip"))
    elif named:
        return  # a bare name: tokenizer.json's own flag stands
    else:
        lstrip = _marks_word_starts(saved.get("pre_tokenizer"))
    if lstrip != bool(entry.get("lstrip")):
        tok.add_special_tokens([AddedToken(mask, lstrip=lstrip, rstrip=bool(entry.get("rstrip")),
                                           single_word=bool(entry.get("single_word")), normalized=False)])


def _marks_word_starts(pre_tokenizer: Any) -> bool:
    if not isinstance(pre_tokenizer, dict):
        return False
    if pre_tokenizer.get("type") in ("Metaspace", "ByteLevel"):
        return True
    return any(_marks_word_starts(p) for p in pre_tokenizer.get("pretokenizers") or [])


def _is_bpe(tok: Any) -> bool:
    return type(tok.model).__name__ == "BPE"


def _converted(model_dir: Path) -> Any:
    try:
        from transformers import AutoTokenizer

        fast = AutoTokenizer.from_pretrained(model_dir, use_fast=True)
    except Exception as exc:
        raise SourceError(f"{model_dir} has no tokenizer.json, vocab.txt or vocab.json + merges.txt, and "
                          f"transformers could not build one ({type(exc).__name__}: {str(exc)[:200]}). "
                          "Save the model's fast tokenizer (tokenizer.json) next to it") from exc
    if not getattr(fast, "is_fast", False):
        raise SourceError(f"{model_dir}: transformers has only a slow tokenizer for this model; save a "
                          "tokenizer.json next to it")
    return fast
