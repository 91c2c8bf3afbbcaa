"""Sweep CREST's open knobs on the end-to-end workload: one JSON line per (setting, seed).

Usage: ``python -m crest.bench.sweep OUT.jsonl WORKLOAD FRAC SEEDS SETTING_JSON [...]``,
each setting a JSON object of :class:`crest.compare.CrestSetup` fields. Random runs at the
same fraction and seeds are included once, as the reference.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace

from crest.compare import CrestSetup, TrainSetup, run_baseline, run_crest, warm_up
from crest.embedded import local_coordinator
from crest.workloads import WORKLOADS


def main(argv: list[str]) -> None:
    out, workload, frac, seeds, *settings = argv
    data = WORKLOADS[workload]()
    train = TrainSetup()
    warm_up(data, train)
    with open(out, "a") as sink, local_coordinator() as coordinator:
        for seed in range(int(seeds)):
            result = run_baseline(data, train, float(frac), seed, progress=False)
            sink.write(json.dumps({"setting": "random", **asdict(result)}) + "\n")
            sink.flush()
        for setting in settings:
            crest = replace(CrestSetup(), **json.loads(setting))
            for seed in range(int(seeds)):
                result = run_crest(data, train, crest, float(frac), seed, coordinator, False)
                sink.write(json.dumps({"setting": setting, **asdict(result)}) + "\n")
                sink.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
