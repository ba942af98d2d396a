"""Exact rewrites of a trained BertForMaskedLM into other families' layouts, and seeded tiny models
of the families no wheel ships weights for. Test data builders, not test cases.

`BUILDERS` holds one builder per family of the registry (`mlm_export.families.FAMILIES`), keyed by its
name: `BUILDERS[name](directory)` saves a tiny checkpoint of that family there, tokenizer included,
as both mlm-export and transformers' fill-mask pipeline read it. Tests run over the registry, so a
family added without its builder here fails them.

A rewrite keeps every weight; only names and the embedding tables' shapes change:
- RoBERTa: `pad_token_id + 1` zero rows before the position table (RoBERTa counts positions from
  there), one token-type row, the head as `lm_head`;
- DistilBERT: token-type row 0 folded into the positions, attention and FFN renamed;
- ELECTRA generator: `embedding_size = hidden_size`, the head as `generator_predictions` and
  `generator_lm_head`.
PyTorch logits agree with the BERT original to float rounding (a test checks it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from conftest import SPECIALS, WORDS, _save_tiny_bert

BERT_TO_ROBERTA_TOKENS = {"[PAD]": "<pad>", "[UNK]": "<unk>", "[CLS]": "<s>", "[SEP]": "</s>", "[MASK]": "<mask>"}


def _shared(config: Any) -> dict:
    return {"vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads,
            "intermediate_size": config.intermediate_size, "hidden_act": config.hidden_act,
            "layer_norm_eps": config.layer_norm_eps}


def _load(model: Any, state: dict) -> Any:
    info = model.load_state_dict(state, strict=False)
    assert not info.unexpected_keys and not [k for k in info.missing_keys if not k.endswith("position_ids")], info
    return model.eval()


def to_roberta(bert: Any) -> Any:
    from transformers import RobertaConfig, RobertaForMaskedLM

    c, pad = bert.config, bert.config.pad_token_id
    config = RobertaConfig(**_shared(c), max_position_embeddings=c.max_position_embeddings + pad + 1,
                           type_vocab_size=1, pad_token_id=pad)
    state = {}
    for key, value in bert.state_dict().items():
        if key.startswith("bert.pooler") or key.endswith("position_ids"):
            continue
        if key == "bert.embeddings.position_embeddings.weight":
            value = torch.cat([torch.zeros(pad + 1, value.shape[1]), value])
        elif key == "bert.embeddings.token_type_embeddings.weight":
            value = value[:1]
        key = key.replace("bert.", "roberta.", 1)
        key = (key.replace("cls.predictions.transform.dense", "lm_head.dense")
                  .replace("cls.predictions.transform.LayerNorm", "lm_head.layer_norm")
                  .replace("cls.predictions.decoder", "lm_head.decoder")
                  .replace("cls.predictions.bias", "lm_head.bias"))
        state[key] = value
    return _load(RobertaForMaskedLM(config), state)


def to_distilbert(bert: Any) -> Any:
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    c, s = bert.config, bert.state_dict()
    config = DistilBertConfig(vocab_size=c.vocab_size, dim=c.hidden_size, n_layers=c.num_hidden_layers,
                              n_heads=c.num_attention_heads, hidden_dim=c.intermediate_size, activation=c.hidden_act,
                              max_position_embeddings=c.max_position_embeddings, pad_token_id=c.pad_token_id)
    e = "bert.embeddings."
    state = {"distilbert.embeddings.word_embeddings.weight": s[e + "word_embeddings.weight"],
             "distilbert.embeddings.position_embeddings.weight":
                 s[e + "position_embeddings.weight"] + s[e + "token_type_embeddings.weight"][0],
             "distilbert.embeddings.LayerNorm.weight": s[e + "LayerNorm.weight"],
             "distilbert.embeddings.LayerNorm.bias": s[e + "LayerNorm.bias"],
             "vocab_projector.weight": s["cls.predictions.decoder.weight"],
             "vocab_projector.bias": s["cls.predictions.bias"]}
    layer = {"attention.self.query": "attention.q_lin", "attention.self.key": "attention.k_lin",
             "attention.self.value": "attention.v_lin", "attention.output.dense": "attention.out_lin",
             "attention.output.LayerNorm": "sa_layer_norm", "intermediate.dense": "ffn.lin1",
             "output.dense": "ffn.lin2", "output.LayerNorm": "output_layer_norm"}
    head = {"cls.predictions.transform.dense": "vocab_transform",
            "cls.predictions.transform.LayerNorm": "vocab_layer_norm"}
    for part in ("weight", "bias"):
        for i in range(c.num_hidden_layers):
            for old, new in layer.items():
                state[f"distilbert.transformer.layer.{i}.{new}.{part}"] = s[f"bert.encoder.layer.{i}.{old}.{part}"]
        for old, new in head.items():
            state[f"{new}.{part}"] = s[f"{old}.{part}"]
    return _load(DistilBertForMaskedLM(config), state)


def to_electra(bert: Any) -> Any:
    from transformers import ElectraConfig, ElectraForMaskedLM

    c = bert.config
    config = ElectraConfig(**_shared(c), embedding_size=c.hidden_size, type_vocab_size=c.type_vocab_size,
                           max_position_embeddings=c.max_position_embeddings, pad_token_id=c.pad_token_id)
    state = {}
    for key, value in bert.state_dict().items():
        if key.startswith("bert.pooler") or key.endswith("position_ids"):
            continue
        key = key.replace("bert.", "electra.", 1)
        key = (key.replace("cls.predictions.transform.dense", "generator_predictions.dense")
                  .replace("cls.predictions.transform.LayerNorm", "generator_predictions.LayerNorm")
                  .replace("cls.predictions.decoder", "generator_lm_head")
                  .replace("cls.predictions.bias", "generator_lm_head.bias"))
        state[key] = value
    return _load(ElectraForMaskedLM(config), state)


def save_layout(model: Any, directory: Path, vocab: list[str], renames: dict[str, str] | None = None) -> Path:
    """A Hugging Face directory: the model, its vocab.txt, and special_tokens_map.json naming its specials."""
    renames = renames or {}
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    (directory / "vocab.txt").write_text("\n".join(renames.get(t, t) for t in vocab) + "\n")
    roles = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
             "mask_token": "[MASK]"}
    (directory / "special_tokens_map.json").write_text(json.dumps({k: renames.get(v, v) for k, v in roles.items()}))
    return directory


ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-", "<null_1>", "<mask>"]
CORPUS = ["the cat sat on the mat .", "a big red dog ran to the small house .", "the blue tree was not big !",
          "is the cat on the mat or in the house ?", "dogs and cats ran and sat ."] * 20


def _peaked(bias: Any, seed: int) -> None:
    """A spread decoder bias: random weights alone predict flat, and top-k order would be noise."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bias.copy_(torch.randn(bias.shape[0], generator=generator) * 4)


def tiny_esm(directory: Path, positions: str = "rotary") -> Path:
    """ESM-2 style (rotary positions) or ESM-1b style ("absolute", counted from pad id + 1)."""
    from transformers import EsmConfig, EsmForMaskedLM

    torch.manual_seed(2)
    config = EsmConfig(vocab_size=len(ESM_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=66, pad_token_id=1, mask_token_id=32,
                       position_embedding_type=positions, token_dropout=True, emb_layer_norm_before=False)
    model = EsmForMaskedLM(config).eval()
    _peaked(model.lm_head.bias, 2)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    (directory / "vocab.txt").write_text("\n".join(ESM_VOCAB) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"cls_token": "<cls>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
         "mask_token": "<mask>"}))
    return directory


def _save_roberta_like(config_class: Any, model_class: Any, vocab_size: int, seed: int, directory: Path) -> Path:
    """A seeded two-layer model of RoBERTa's layout (pad 1, positions offset by it), peaked and saved."""
    torch.manual_seed(seed)
    config = config_class(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                          eos_token_id=2, type_vocab_size=1)
    model = model_class(config).eval()
    _peaked(model.lm_head.bias, seed)
    model.save_pretrained(directory)
    return directory


def tiny_roberta_bpe(directory: Path) -> Path:
    """RoBERTa with a byte-level BPE trained here, saved as vocab.json + merges.txt (no tokenizer.json)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1,
                                  special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_model(str(directory))
    return _save_roberta_like(RobertaConfig, RobertaForMaskedLM, tokenizer.get_vocab_size(), 3, directory)


def tiny_xlm_roberta_unigram(directory: Path) -> Path:
    """XLM-R with a Unigram tokenizer trained here, saved as tokenizer.json without its template."""
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    tokenizer = SentencePieceUnigramTokenizer()
    tokenizer.train_from_iterator(CORPUS, vocab_size=120, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  unk_token="<unk>")
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"}))
    return _save_roberta_like(XLMRobertaConfig, XLMRobertaForMaskedLM, tokenizer.get_vocab_size(), 4, directory)


def tiny_albert_unigram(directory: Path) -> Path:
    """ALBERT as albert-base-v2 names its tokens (`<pad>`, `<unk>`, `[CLS]`, `[SEP]`, `[MASK]`), with only a
    tokenizer.json to say so: no special_tokens_map.json."""
    from tokenizers import SentencePieceUnigramTokenizer, processors
    from transformers import AlbertConfig, AlbertForMaskedLM

    tokenizer = SentencePieceUnigramTokenizer()
    tokenizer.train_from_iterator(CORPUS, vocab_size=120, special_tokens=["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"],
                                  unk_token="<unk>")
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                             special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    torch.manual_seed(6)
    config = AlbertConfig(vocab_size=tokenizer.get_vocab_size(), embedding_size=16, hidden_size=32,
                          num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                          pad_token_id=0)
    model = AlbertForMaskedLM(config).eval()
    _peaked(model.predictions.bias, 6)
    model.save_pretrained(directory)
    return directory


def tiny_camembert_unigram(directory: Path) -> Path:
    """CamemBERT with a Unigram tokenizer trained here (as its sentencepiece model is), <s> ... </s> added."""
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import CamembertConfig, CamembertForMaskedLM

    tokenizer = SentencePieceUnigramTokenizer()
    tokenizer.train_from_iterator(CORPUS, vocab_size=120, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  unk_token="<unk>")
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    add_template(directory, "<s>", "</s>")
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"}))
    return _save_roberta_like(CamembertConfig, CamembertForMaskedLM, tokenizer.get_vocab_size(), 7, directory)


def add_template(source: Path, cls: str, sep: str) -> None:
    """Give tokenizer.json the `cls ... sep` template a checkpoint saved without one lacks."""
    data = json.loads((source / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in data["added_tokens"]}
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": cls, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": sep, "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": cls, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": sep, "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}},
                 {"SpecialToken": {"id": sep, "type_id": 0}}],
        "special_tokens": {t: {"id": t, "ids": [ids[t]], "tokens": [t]} for t in (cls, sep)}}
    (source / "tokenizer.json").write_text(json.dumps(data))


def tiny_bert(directory: Path) -> Path:
    """The suite's tiny WordPiece BERT (conftest's `tiny_dir`: same vocabulary, same seed)."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = SPECIALS + WORDS
    return _save_tiny_bert(directory, vocab, len(vocab), seed=0)


def _rewritten(convert: Callable[[Any], Any]) -> Callable[[Path], Path]:
    """A builder: the tiny BERT (built beside `directory`), rewritten exactly into another layout."""
    def build(directory: Path) -> Path:
        from transformers import BertForMaskedLM

        bert = BertForMaskedLM.from_pretrained(tiny_bert(directory.with_name(directory.name + "-bert"))).eval()
        source = save_layout(convert(bert), directory, SPECIALS + WORDS)
        (source / "tokenizer_config.json").write_text('{"do_lower_case": true}')
        return source

    return build


def _xlm_roberta_with_template(directory: Path) -> Path:
    source = tiny_xlm_roberta_unigram(directory)
    add_template(source, "<s>", "</s>")  # the pipeline's tokenizer adds only what tokenizer.json says
    return source


# one builder per registered family, by its name: a test fails for a family that has none
BUILDERS: dict[str, Callable[[Path], Path]] = {
    "bert": tiny_bert,
    "roberta": tiny_roberta_bpe,
    "xlm-roberta": _xlm_roberta_with_template,
    "camembert": tiny_camembert_unigram,
    "distilbert": _rewritten(to_distilbert),
    "electra": _rewritten(to_electra),
    "albert": tiny_albert_unigram,
    "esm": tiny_esm,
}
