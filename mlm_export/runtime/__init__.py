"""Runtime: serving an artifact without torch or transformers.

    backends.py   the `Session` interface and the one place a backend is chosen from `providers=`
    ort.py        ONNX Runtime (CPU, CUDA)          openvino.py  OpenVINO (the bf16 variant)
    threads.py    intra-op thread limits             graph.py     LoadedGraph: one hash-checked graph, its feeds
    predictor.py  OnnxMaskFiller (fill-mask)         scoring.py   pseudo-log-likelihood on a LoadedGraph
    sparse.py     SparseEncoder (SPLADE)             embed.py     Embedder (hidden states, pooled)
    tasks.py      what sparse and embed share        texts.py     the checks every text goes through
    mutations.py  mutation effects (marginals, PLL delta) on the scorer

Which precision runs on which backend is `mlm_export.variants`' table.
"""
