"""Passes: ONNX in, ONNX out; torch-free (onnx and onnxruntime's tools only).

    fuse.py         ONNX Runtime's transformer fusions, counted and checked against the layer count
    fp16.py         half precision for the CUDA provider       int8.py      dynamic int8 recipes (CPU)
    calibration.py  activation ranges that pick the block-wise layers of an int8 recipe
    portable.py     the standard-ops graph OpenVINO reads (the bf16 variant)
    graph_file.py   graphs with or without external data (the 2 GB protobuf limit)
"""
