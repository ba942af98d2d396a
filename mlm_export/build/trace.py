"""Export stage: trace a BertForMaskedLM into the two ONNX graph forms.

The TorchScript exporter (dynamo=False) is used on purpose: ONNX Runtime's BERT fusions match its
graphs, not the dynamo exporter's (onnxruntime#19423). The model must be loaded with eager
attention for the same reason.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from ..errors import ExportError

log = logging.getLogger("mlm_export")

INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
FILL_MASK_OUTPUTS = ["mask_batch_index", "mask_position", "scores", "token_ids", "logits"]
_TRACE_TOP_K = 3  # any constant; graph surgery replaces it with the `top_k` input


def _sample_inputs(model: Any, mask_token_id: int) -> tuple:
    import torch

    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(min(5, vocab - 1), vocab, (2, 8), generator=generator)
    ids[0, 3] = mask_token_id
    ids[1, 5] = mask_token_id
    return ids, torch.ones_like(ids), torch.zeros_like(ids)


def _torch_export(module: Any, args: tuple, path: Path, outputs: list[str], dynamic: dict,
                  opset: int) -> None:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                              input_names=INPUT_NAMES, output_names=outputs,
                              dynamic_axes=dynamic, do_constant_folding=True)
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed for {path.name}: {exc}") from exc


def export_logits(model: Any, path: Path, opset: int, mask_token_id: int) -> None:
    """Hugging Face-compatible form: logits for every position, loadable by optimum."""
    import torch

    class LogitsForm(torch.nn.Module):
        def __init__(self, mlm: Any) -> None:
            super().__init__()
            self.mlm = mlm

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            return self.mlm(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=token_type_ids).logits

    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in INPUT_NAMES + ["logits"]}
    log.info("exporting logits form -> %s", path.name)
    _torch_export(LogitsForm(model).eval(), _sample_inputs(model, mask_token_id), path, ["logits"],
                  axes, opset)


def export_fill_mask(model: Any, path: Path, opset: int, mask_token_id: int) -> None:
    """Fast form: the head runs only at [MASK] positions and top-k happens in the graph.

    Outputs, one row per [MASK] in row-major order: batch index, position, top-k probabilities,
    top-k token ids, and the top-k logits (kept so parity can be checked on logits).
    """
    import torch

    class FillMaskForm(torch.nn.Module):
        def __init__(self, mlm: Any) -> None:
            super().__init__()
            self.bert = mlm.bert
            self.head = mlm.cls

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            where = torch.nonzero(input_ids == mask_token_id)
            batch_index, position = where[:, 0], where[:, 1]
            logits = self.head(hidden[batch_index, position])
            top_logits, top_ids = torch.topk(logits, _TRACE_TOP_K, dim=-1)
            # softmax of the top-k only needs the log-normaliser of the full row
            scores = torch.exp(top_logits - torch.logsumexp(logits, dim=-1, keepdim=True))
            return batch_index, position, scores, top_ids, top_logits

    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in INPUT_NAMES}
    axes.update({name: {0: "num_masks"} for name in FILL_MASK_OUTPUTS})
    for name in ("scores", "token_ids", "logits"):
        axes[name][1] = "top_k"
    log.info("exporting fill-mask form -> %s", path.name)
    _torch_export(FillMaskForm(model).eval(), _sample_inputs(model, mask_token_id), path,
                  FILL_MASK_OUTPUTS, axes, opset)
    _make_top_k_an_input(path, model.config.vocab_size)


def _make_top_k_an_input(path: Path, vocab_size: int) -> None:
    """Replace TopK's traced constant K with a scalar `top_k` input, clamped to the vocabulary."""
    import onnx
    from onnx import TensorProto, helper

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    topk = [node for node in graph.node if node.op_type == "TopK"]
    if len(topk) != 1:
        raise ExportError(f"expected one TopK node in the fill-mask graph, found {len(topk)}")
    graph.input.append(helper.make_tensor_value_info("top_k", TensorProto.INT64, []))
    graph.initializer.extend([
        helper.make_tensor("top_k_shape", TensorProto.INT64, [1], [1]),
        helper.make_tensor("vocab_size", TensorProto.INT64, [1], [vocab_size]),
    ])
    index = list(graph.node).index(topk[0])
    new_nodes = [
        helper.make_node("Reshape", ["top_k", "top_k_shape"], ["top_k_1d"], name="top_k_reshape"),
        helper.make_node("Min", ["top_k_1d", "vocab_size"], ["top_k_clamped"], name="top_k_clamp"),
    ]
    for offset, node in enumerate(new_nodes):
        graph.node.insert(index + offset, node)
    topk[0].input[1] = "top_k_clamped"
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(path))
