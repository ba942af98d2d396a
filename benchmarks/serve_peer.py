"""The peer of `mlm-export serve` in benchmarks/serve.py: the fill-mask server a user writes without mlm-export.
A FastAPI app with one sync endpoint around a transformers fill-mask pipeline on the PyTorch model, run by
uvicorn with its defaults (FastAPI runs a sync endpoint in its thread pool; uvicorn logs every request).

    python -m benchmarks.serve_peer --model DIR [--tokenizer DIR] --port P [--host 127.0.0.1] [--threads 2]

DIR is a Hugging Face BertForMaskedLM directory; --tokenizer a directory with its tokenizer.json (default DIR).
Serves `POST /fill-mask` ({"inputs": TEXT, "parameters": {"top_k": K}}) and `GET /health`.
Needs the `export` extra, fastapi and uvicorn.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class Parameters(BaseModel):
    top_k: int = 5


class FillMaskRequest(BaseModel):
    inputs: str
    parameters: Parameters = Parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    import uvicorn
    from fastapi import FastAPI
    from transformers import AutoModelForMaskedLM, PreTrainedTokenizerFast, pipeline

    torch.set_num_threads(args.threads)
    fill = pipeline("fill-mask", model=AutoModelForMaskedLM.from_pretrained(args.model),
                    tokenizer=PreTrainedTokenizerFast.from_pretrained(args.tokenizer or args.model), top_k=5)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/fill-mask")
    def fill_mask(request: FillMaskRequest) -> list[dict[str, Any]]:
        return fill(request.inputs, top_k=request.parameters.top_k)

    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
