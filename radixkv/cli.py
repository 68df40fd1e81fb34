"""The `radixkv` console script: `radixkv serve [flags]` and `radixkv bench {multiturn,trace} ...`,
the same as `python -m radixkv.serve` and `python -m radixkv.bench`."""

from __future__ import annotations

import sys

USAGE = """usage: radixkv {serve,bench} [options]

  radixkv serve ...   an OpenAI-compatible server (python -m radixkv.serve; see --help)
  radixkv bench ...   the benchmark harness: multiturn, trace (python -m radixkv.bench)
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "serve":
        from radixkv.serve import main as serve

        return serve(rest)
    if command == "bench":
        from radixkv.bench.__main__ import main as bench

        return bench(rest)
    print(f"radixkv: unknown command {command!r}\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
