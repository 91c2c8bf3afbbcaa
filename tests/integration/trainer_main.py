"""A trainer process that checkpoints, and can SIGKILL itself:
``python -m tests.integration.trainer_main ADDR JOB CHECKPOINT SAVE_AT KILL_AT OUT``
(KILL_AT < 0: never). Writes the batches it saw as JSON when it finishes."""

import json
import os
import signal
import sys
from pathlib import Path

from crest.client.remote import RemoteCoordinator
from tests.training import train_with_checkpoint


def main(address: str, job_id: str, checkpoint: str, save_at: str, kill_at: str, out: str) -> None:
    def maybe_die(step: int) -> None:
        if step == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)

    with RemoteCoordinator(address, retry_s=120) as remote:
        seen = train_with_checkpoint(
            remote, job_id, Path(checkpoint), int(save_at), None, maybe_die
        )
    Path(out).write_text(json.dumps(seen))


if __name__ == "__main__":
    main(*sys.argv[1:])
