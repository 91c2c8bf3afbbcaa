#!/bin/sh
# The coordinator container's command (installed in the image as `crest-coordinator`):
# `crest serve`, configured by CREST_* variables, with any extra `crest serve` flags passed on.
#
# With the Ray selector (CREST_SELECTOR=ray and CREST_RAY_ADDRESS set) the container first joins
# the Ray cluster as a node without CPUs or GPUs: a Ray driver has to run on a node of its cluster
# (ray.init(address=...) looks for a raylet on its own host and gives up without one), and no
# selector actor should land next to the coordinator. RAY_AUTH_TOKEN must be the cluster's.
set -eu

if [ "${CREST_SELECTOR:-}" = ray ] && [ -n "${CREST_RAY_ADDRESS:-}" ]; then
  # The object store of this node holds what the coordinator hands the actors (a region's
  # embeddings, tens of MB): 512 MiB, below the container's /dev/shm (compose: shm_size).
  ray start --address="$CREST_RAY_ADDRESS" --num-cpus=0 --num-gpus=0 \
    --object-store-memory=536870912 --disable-usage-stats
fi

# exec: `crest serve` receives SIGTERM itself and stops gracefully (grace_s).
exec crest serve "$@"
