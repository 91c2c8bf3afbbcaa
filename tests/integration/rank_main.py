"""One trainer rank in its own process: ``python -m tests.integration.rank_main ADDR JOB RANK OUT``.

Trains the test MLP through a remote coordinator and writes the batches it saw as JSON.
"""

import json
import sys

from crest.client.remote import RemoteCoordinator
from tests.training import train


def main(address: str, job_id: str, rank: str, out: str) -> None:
    with RemoteCoordinator(address, retry_s=120) as remote:
        session, served = train(remote, job_id, rank=int(rank))
    with open(out, "w") as sink:
        json.dump({"batches": served, "regions": session.timings.regions}, sink)


if __name__ == "__main__":
    main(*sys.argv[1:])
