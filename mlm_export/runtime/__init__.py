"""Runtime: serving an artifact with ONNX Runtime alone (no torch, no transformers).

    providers.py  which execution provider, honoured or refused     predictor.py  OnnxMaskFiller
"""
