"""Exporter: the torch side, a checkpoint into a verified artifact (needs the `export` extra).

    source.py     MODEL -> files on disk and the family       model.py     the checkpoint as a model
    tokenizer.py  the tokenizer the artifact carries          trace.py     the two graph forms
    pipeline.py   export_model: trace, passes, the int8 recipe search, verify, write the artifact

The ONNX-in, ONNX-out rewrites it applies live in `mlm_export.passes`, which never imports torch.
"""
