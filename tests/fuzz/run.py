"""Run one fuzz target under atheris (libFuzzer, coverage-guided over the instrumented strongroom code).

    python -m tests.fuzz.run node-frames -runs=1000000 -max_len=4096 [CORPUS_DIR]

Every libFuzzer flag works (``-max_total_time``, ``-jobs``...). A finding stops the run with the
input's traceback and writes it to ``crash-<sha1>``; ``python -m tests.fuzz.run TARGET crash-<sha1>``
replays one input. libFuzzer's own last lines say how many inputs ran (``Done N runs in S second(s)``)
and the coverage (``cov:`` edges, ``ft:`` features, ``corp:`` inputs kept).
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(f"usage: python -m tests.fuzz.run TARGET [libFuzzer flags] [corpus]\ntargets: "
                         f"{', '.join(_targets())}")
    target_name = sys.argv.pop(1)
    with atheris.instrument_imports(include=["strongroom", "msgpack"]):
        # Everything a target reaches, imported here so that it is instrumented (coverage feedback).
        import strongroom.agent.functions
        import strongroom.agent.runtime
        import strongroom.agent.server
        import strongroom.dispatch.ops
        import strongroom.dispatch.table
        import strongroom.objects.attributes
        import strongroom.transport.protocol  # noqa: F401
        from tests.fuzz import targets
    target = targets.TARGETS[target_name]
    if target_name == "agent-calls":
        targets._harness()  # built once, outside the measured inputs
    def one(data: bytes) -> None:
        target(data)

    if not any(not arg.startswith("-") for arg in sys.argv[1:]):
        # No corpus named: start from well-formed inputs (a fresh directory, so each run starts alike).
        corpus = tempfile.mkdtemp(prefix=f"fuzz-{target_name}-")
        for index, seed in enumerate(targets.SEEDS[target_name]()):
            with open(os.path.join(corpus, f"seed-{index}"), "wb") as f:
                f.write(seed)
        sys.argv.append(corpus)
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()  # libFuzzer ends the process: its last lines say how many inputs ran, and the coverage


def _targets() -> list[str]:
    from tests.fuzz.targets import TARGETS

    return sorted(TARGETS)


if __name__ == "__main__":
    main()
