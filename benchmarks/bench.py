"""Peer benchmark entry point; the same as `mlm-export bench` (see its --help).

    python benchmarks/bench.py                      # bert-base-sized and AntiBERTy, every system
    python benchmarks/bench.py --model antiberty --rounds 0.3
"""

from mlm_export.cli import main

if __name__ == "__main__":
    main(["bench", *__import__("sys").argv[1:]])
