"""Trace stage: a family's encoder and MLM head, traced into the two ONNX graph forms.

The TorchScript exporter (dynamo=False) is used on purpose: ONNX Runtime's BERT fusions match its
graphs, not the dynamo exporter's (onnxruntime#19423). Each family is loaded with the attention
implementation its spec names for the same reason.

Both forms feed the head 2-D hidden states, so its decoder is a Gemm on the embedding matrix itself:
the tied weight is stored once (a 3-D MatMul would get a transposed, constant-folded copy).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

from ..errors import ExportError
from ..families import FamilySpec
from ..manifest import TensorSpec
from ..progress import stage
from ..passes.graph_file import declare_inputs, load_graph, save_graph

log = logging.getLogger("mlm_export")

FILL_MASK_OUTPUTS = ["mask_batch_index", "mask_position", "scores", "token_ids", "logits", "target_log_probs"]
# fed by every caller; the predictor's defaults ask for nothing. `score_positions` (format 6) runs the head at
# unmasked positions as well: wild-type marginals read every position of one unmasked pass
SCORING_INPUTS = ["target_ids", "exclude_special", "score_positions"]
HIDDEN_OUTPUT = "hidden_states"
HEAD_INPUT = "rows"
_TRACE_TOP_K = 3  # any constant; graph surgery replaces it with the `top_k` input


def graph_io(family: FamilySpec, form: str, vocab_size: int,
             hidden_size: int = 0) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The inputs and outputs of a traced form, as the manifest declares them to the runtime."""
    inputs = tuple(TensorSpec(name, "int64", ("batch", "sequence")) for name in family.input_names)
    if form == "logits":
        return inputs, (TensorSpec("logits", "float32", ("batch", "sequence", vocab_size)),)
    if form == "sparse":
        return inputs, (TensorSpec("weights", "float32", ("batch", vocab_size)),)
    if form == "embed":
        return inputs, (TensorSpec(HIDDEN_OUTPUT, "float32", ("batch", "sequence", hidden_size)),)
    per_mask = {"mask_batch_index": ("int64", ("num_masks",)), "mask_position": ("int64", ("num_masks",)),
                "scores": ("float32", ("num_masks", "top_k")), "token_ids": ("int64", ("num_masks", "top_k")),
                "logits": ("float32", ("num_masks", "top_k")),
                "target_log_probs": ("float32", ("num_masks", "num_targets"))}
    scoring = (TensorSpec("target_ids", "int64", ("target_rows", "num_targets")),
               TensorSpec("exclude_special", "bool", ()),
               TensorSpec("score_positions", "bool", ("score_rows", "score_columns")))
    return (inputs + scoring + (TensorSpec("top_k", "int64", ()),),
            tuple(TensorSpec(name, *per_mask[name]) for name in FILL_MASK_OUTPUTS))


def _sample_inputs(model: Any, family: FamilySpec, mask_token_id: int) -> tuple:
    import torch

    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(min(5, vocab - 1), vocab, (2, 8), generator=generator)
    ids[ids == mask_token_id] = next(i for i in range(vocab) if i != mask_token_id)  # exactly two masks
    ids[0, 3] = mask_token_id
    ids[1, 5] = mask_token_id
    return (ids, torch.ones_like(ids)) + ((torch.zeros_like(ids),) if family.token_types else ())


def _hidden_sample(model: Any) -> Any:
    import torch

    return torch.randn(6, model.config.hidden_size, generator=torch.Generator().manual_seed(0))


def _scoring_sample() -> tuple:
    import torch

    score_positions = torch.zeros(2, 8, dtype=torch.bool)
    score_positions[0, 1] = score_positions[1, 6] = True
    return torch.tensor([[5, 6], [7, 5], [6, 7], [5, 7]]), torch.tensor(False), score_positions  # a row per head row


def _torch_export(module: Any, args: tuple, path: Path, inputs: list[str], outputs: list[str],
                  dynamic: dict, opset: int) -> None:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                              input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic, do_constant_folding=True)
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed for {path.name}: {exc}") from exc


def _forms(model: Any, family: FamilySpec) -> tuple[Any, Any]:
    """The two traceable modules: logits for every position, and the fill-mask form."""
    import torch

    names = family.input_names

    class Encoded(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = family.encoder(model)
            self.head = family.head(model)

        def hidden(self, inputs: tuple) -> Any:
            return self.encoder(**dict(zip(names, inputs)))[0]

    class LogitsForm(Encoded):
        def forward(self, *inputs):
            hidden = self.hidden(inputs)
            flat = self.head(hidden.reshape(-1, hidden.shape[-1]))
            return flat.reshape(hidden.shape[0], hidden.shape[1], flat.shape[-1])

    class FillMaskForm(Encoded):
        def __init__(self, mask_token_id: int, special_ids: tuple[int, ...]) -> None:
            super().__init__()
            self.mask_token_id = mask_token_id
            bias = torch.zeros(model.config.vocab_size)
            bias[list(special_ids)] = -float("inf")
            self.register_buffer("special_bias", bias)

        def forward(self, *args):
            inputs, (target_ids, exclude_special, score_positions) = args[:-3], args[-3:]
            hidden = self.hidden(inputs)
            # the head's rows: every mask, and the positions the caller asks for ([1, 1] False: none)
            where = torch.nonzero((inputs[0] == self.mask_token_id) | score_positions)
            batch_index, position = where[:, 0], where[:, 1]
            logits = self.head(hidden[batch_index, position])
            top_logits, top_ids = torch.topk(logits, _TRACE_TOP_K, dim=-1)
            # softmax of the top-k only needs the log-normaliser of the full row
            scores = torch.exp(top_logits - torch.logsumexp(logits, dim=-1, keepdim=True))
            # scoring: log-softmax at caller-given ids (one row for every mask, or a row per mask),
            # over the full vocabulary or, when asked, over it without the special tokens
            scored = torch.where(exclude_special, logits + self.special_bias, logits)
            targets = target_ids.expand(logits.shape[0], -1)
            target_log_probs = torch.gather(scored, 1, targets) - torch.logsumexp(scored, dim=-1, keepdim=True)
            return batch_index, position, scores, top_ids, top_logits, target_log_probs

    return LogitsForm, FillMaskForm


def export_logits(model: Any, family: FamilySpec, path: Path, opset: int, mask_token_id: int,
                  external: bool = False) -> None:
    """Hugging Face-compatible form: logits for every position, loadable by optimum."""
    logits_form, _ = _forms(model, family)
    names = list(family.input_names)
    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in names + ["logits"]}
    family.prepare_trace(model)
    # torch writes a graph over 2 GB one file per tensor: into a folder of its own
    with stage(f"exporting the logits form -> {path.name}"), tempfile.TemporaryDirectory(dir=path.parent) as work:
        traced = Path(work) / path.name
        _torch_export(logits_form().eval(), _sample_inputs(model, family, mask_token_id), traced, names,
                      ["logits"], axes, opset)
        save_graph(load_graph(traced), path, external)


def export_fill_mask(model: Any, family: FamilySpec, path: Path, opset: int, mask_token_id: int,
                     special_ids: tuple[int, ...], external: bool = False) -> None:
    """Fast form: the head runs only at mask positions and top-k happens in the graph.

    Outputs, one row per mask in row-major order: batch index, position, top-k probabilities,
    top-k token ids, the top-k logits (kept so parity can be checked on logits), and the
    log-probabilities of the `target_ids` (the scoring outputs: pseudo-log-likelihood, `targets=`).
    A `[1, 0]` target_ids asks for no targets and costs nothing. `score_positions` (bool, `[batch,
    sequence]`) adds rows at unmasked positions, in the same row-major order; `[1, 1]` False adds none.
    """
    import onnx

    _, fill_mask_form = _forms(model, family)
    names = list(family.input_names)
    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in names}
    axes.update({name: {0: "num_masks"} for name in FILL_MASK_OUTPUTS})
    for name in ("scores", "token_ids", "logits"):
        axes[name][1] = "top_k"
    axes["target_log_probs"][1] = "num_targets"
    axes["target_ids"] = {0: "target_rows", 1: "num_targets"}
    axes["score_positions"] = {0: "score_rows", 1: "score_columns"}  # [batch, sequence], or [1, 1] broadcast
    family.prepare_trace(model)
    with stage(f"exporting the fill-mask form -> {path.name}"):
        with tempfile.TemporaryDirectory(dir=path.parent) as work:
            traced = Path(work) / path.name
            _torch_export(fill_mask_form(mask_token_id, special_ids).eval(),
                          _sample_inputs(model, family, mask_token_id) + _scoring_sample(), traced,
                          names + SCORING_INPUTS, FILL_MASK_OUTPUTS, axes, opset)
            graph_model = load_graph(traced)
        _make_top_k_an_input(graph_model, model.config.vocab_size)
        save_graph(graph_model, path, external)
        onnx.checker.check_model(str(path))  # by path: the checker cannot take a graph over 2 GB in memory


def _make_top_k_an_input(graph_model: Any, vocab_size: int) -> None:
    """Replace TopK's traced constant K with a scalar `top_k` input, clamped to the vocabulary."""
    from onnx import TensorProto, helper

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


def export_encoder(model: Any, family: FamilySpec, path: Path, opset: int, mask_token_id: int,
                   layer: int | None = None, external: bool = False) -> None:
    """The encoder alone: `hidden_states` [batch, sequence, hidden] of `layer` (None: the last, as the MLM
    head reads it; 0 is the embeddings, as in transformers' `hidden_states` and esm's `repr_layers`).
    The embed task's graph, and the first half of the sparse task's."""
    import torch

    names = list(family.input_names)

    class EncoderForm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = family.encoder(model)

        def forward(self, *inputs):
            kwargs = dict(zip(names, inputs))
            if layer is None:
                return self.encoder(**kwargs)[0]
            return self.encoder(**kwargs, output_hidden_states=True).hidden_states[layer]

    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in names + [HIDDEN_OUTPUT]}
    family.prepare_trace(model)
    with stage(f"exporting the encoder -> {path.name}"), tempfile.TemporaryDirectory(dir=path.parent) as work:
        traced = Path(work) / path.name
        _torch_export(EncoderForm().eval(), _sample_inputs(model, family, mask_token_id), traced, names,
                      [HIDDEN_OUTPUT], axes, opset)
        graph_model = load_graph(traced)
        declare_inputs(graph_model, names)
        save_graph(graph_model, path, external)



def export_head(model: Any, family: FamilySpec, path: Path, opset: int) -> None:
    """The MLM head alone: `rows` [N, hidden] of hidden states to `logits` [N, vocabulary]; the sparse task
    runs it over chunks of positions inside a Loop (passes.sparse), so its logits never exist whole."""
    axes = {HEAD_INPUT: {0: "rows"}, "logits": {0: "rows"}}
    with stage(f"exporting the MLM head -> {path.name}"):
        _torch_export(family.head(model).eval(), (_hidden_sample(model),), path, [HEAD_INPUT], ["logits"], axes,
                      opset)
