"""mlm-export's benchmarks: they live in the source repository, never in the wheel.

    python -m benchmarks [--model M] [--system S] [--rounds R] [--json]   # the peer benchmark (harness.py)
    python benchmarks/latency.py ARTIFACT                                  # one artifact's variants
    python benchmarks/pll.py ARTIFACT                                      # scoring against AntiBERTy

They use mlm-export through its public API; the package never imports them.
"""
