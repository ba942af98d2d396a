"""Build: a checkpoint into verified ONNX graphs.

    source.py     MODEL -> files on disk and the family       model.py      the checkpoint as a model
    tokenizer.py  the tokenizer the artifact carries          trace.py      the two graph forms
    fuse.py       ONNX Runtime's fusions, checked              precision.py  fp16 and int8 variants
    graph_file.py graphs with or without external data         pipeline.py   export_model: all of it
"""
