"""Turn a parsed E5S1 model into a sentence-transformers folder (BERT config, safetensors, tokenizer.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from modelbuild.charsmap import build_precompiled_charsmap
from modelbuild.e5s1 import E5S1Model

_METASPACE = "\u2581"


def build_tokenizer(model: E5S1Model, max_length: int) -> Tokenizer:
    """XLM-R style tokenizer: precompiled charsmap + space collapse, metaspace, unigram, <s> $A </s>."""
    vocab = list(zip(model.pieces, model.scores, strict=True))
    tok = Tokenizer(models.Unigram(vocab, unk_id=model.unk_id, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(build_precompiled_charsmap(model.norm_map)),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=True)
    bos, eos = model.pieces[model.bos_id], model.pieces[model.eos_id]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, model.bos_id), (eos, model.eos_id)],
    )
    specials = [model.pieces[i] for i in (model.bos_id, model.pad_id, model.eos_id, model.unk_id)]
    tok.add_special_tokens([*specials, *(["<mask>"] if "<mask>" in model.pieces else [])])
    tok.enable_truncation(max_length=max_length)
    return tok


def _state_dict(model: E5S1Model) -> dict[str, np.ndarray]:
    h, ff = model.hidden, model.ffn
    t = model.tensors

    def mat(name: str, rows: int, cols: int) -> np.ndarray:
        return t[name].reshape(rows, cols)

    sd: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": mat("emb.word", model.vocab_size, h),
        "embeddings.position_embeddings.weight": mat("emb.pos", model.max_positions, h),
        "embeddings.token_type_embeddings.weight": mat("emb.type", model.type_vocab, h),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
        # the packed file has no pooler (mean pooling never uses it): zeros keep loading deterministic
        "pooler.dense.weight": np.zeros((h, h), dtype=np.float32),
        "pooler.dense.bias": np.zeros(h, dtype=np.float32),
    }
    for i in range(model.layers):
        p, s = f"encoder.layer.{i}.", f"l{i}."
        sd |= {
            p + "attention.self.query.weight": mat(s + "q.w", h, h),
            p + "attention.self.query.bias": t[s + "q.b"],
            p + "attention.self.key.weight": mat(s + "k.w", h, h),
            p + "attention.self.key.bias": t[s + "k.b"],
            p + "attention.self.value.weight": mat(s + "v.w", h, h),
            p + "attention.self.value.bias": t[s + "v.b"],
            p + "attention.output.dense.weight": mat(s + "ao.w", h, h),
            p + "attention.output.dense.bias": t[s + "ao.b"],
            p + "attention.output.LayerNorm.weight": t[s + "aln.w"],
            p + "attention.output.LayerNorm.bias": t[s + "aln.b"],
            p + "intermediate.dense.weight": mat(s + "fi.w", ff, h),
            p + "intermediate.dense.bias": t[s + "fi.b"],
            p + "output.dense.weight": mat(s + "fo.w", h, ff),
            p + "output.dense.bias": t[s + "fo.b"],
            p + "output.LayerNorm.weight": t[s + "oln.w"],
            p + "output.LayerNorm.bias": t[s + "oln.b"],
        }
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_sentence_transformers_folder(model: E5S1Model, out: Path, max_length: int = 512) -> None:
    """Write `out` so that `SentenceTransformer(str(out))` loads it offline (mean pooling + normalize)."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json(
        out / "config.json",
        {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "vocab_size": model.vocab_size,
            "hidden_size": model.hidden,
            "num_hidden_layers": model.layers,
            "num_attention_heads": model.heads,
            "intermediate_size": model.ffn,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": model.max_positions,
            "type_vocab_size": model.type_vocab,
            "initializer_range": 0.02,
            "layer_norm_eps": model.eps,
            "pad_token_id": model.pad_id,
            "position_embedding_type": "absolute",
            "torch_dtype": "float32",
        },
    )
    build_tokenizer(model, max_length).save(str(out / "tokenizer.json"))
    specials = {
        "bos_token": model.pieces[model.bos_id],
        "cls_token": model.pieces[model.bos_id],
        "eos_token": model.pieces[model.eos_id],
        "sep_token": model.pieces[model.eos_id],
        "pad_token": model.pieces[model.pad_id],
        "unk_token": model.pieces[model.unk_id],
    }
    if "<mask>" in model.pieces:
        specials["mask_token"] = "<mask>"
    _write_json(
        out / "tokenizer_config.json",
        # the generic class loads tokenizer.json verbatim; transformers' XLM-R class rebuilds its own pipeline
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length, **specials},
    )
    _write_json(out / "special_tokens_map.json", specials)
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
    _write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    (out / "1_Pooling").mkdir(exist_ok=True)
    _write_json(
        out / "1_Pooling" / "config.json",
        {"word_embedding_dimension": model.hidden, "pooling_mode_mean_tokens": True},
    )
    (out / "2_Normalize").mkdir(exist_ok=True)
