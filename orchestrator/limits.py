"""Upper bounds on the numbers of a scenario, each with the reason a user reads when it is hit.

A count that multiplies work (rounds, steps, devices, hosts) or a value handed to a library with a
fixed-width type (seeds, millisecond timeouts) is bounded here, so a typo of a few zeros fails at
load time instead of running for a year, exhausting memory, or crashing deep inside torch or zmq.
The bounds are far above any real scenario. Each is a ``Fields.integer``/``Fields.number`` keyword
set: ``tr.integer("rounds", minimum=1, **ROUNDS)``.
"""

from __future__ import annotations

MAX_SEED = 2**32 - 1
SEED = {"maximum": MAX_SEED, "why": "a 32-bit seed, the range numpy, torch and --seeds all accept"}

ROUNDS = {"maximum": 100_000, "why": "each round is a cloud aggregation, an evaluation and a checkpoint"}
LOCAL_STEPS = {"maximum": 100_000, "why": "every device trains this many batches between edge aggregations"}
CLOUD_EVERY = {"maximum": 10_000, "why": "every round runs this many edge periods on every device"}
BATCH_SIZE = {"maximum": 65_536, "why": "a batch and its activations are held in memory on every tier"}
DEVICE_HOSTS = {"maximum": 1_024, "why": "each host is a Ray actor process holding its devices' models"}
EDGE_HOSTS = {"maximum": 1_024, "why": "each edge host is a Ray actor process holding its edges' sessions"}
CHECK_EVERY_STEPS = {"maximum": LOCAL_STEPS["maximum"], "why": "a check interval longer than any period"}
RINGS = {"maximum": 100_000, "why": "no more rings than the devices a scenario may hold"}

# rounds x cloud_every x local_steps: the batches each device trains in the whole run.
MAX_STEPS_PER_DEVICE = 10**8
STEPS_WHY = "at even a millisecond a batch, more is over a day of training per device"

# Timeouts become zmq/Ray timeouts in whole milliseconds (32-bit in zmq): below a millisecond is
# zero (every step fails at once); a peer silent for a day is gone.
TIMEOUT_S = {"minimum": 0.001, "maximum": 86_400.0,
             "why": "timeouts count whole milliseconds; a peer silent for a day is gone"}

# Distances in metres: the Earth is 4e7 m around, so a coordinate or radius beyond 1e8 m is a typo,
# and sums of them (the walk's area) stay finite.
MAX_METRES = 1e8
METRES = {"maximum": MAX_METRES, "why": "metres: the Earth is 4e7 m around"}
# The random walk is computed leg by leg: faster than an airliner only multiplies the legs to draw,
# and an area under a metre makes legs of no length (the walk would never reach a later time).
SPEED_MPS = {"maximum": 300.0, "why": "m/s: faster than an airliner"}
MIN_AREA_M = 1.0
# Mobility seconds per round: a device's walk is drawn leg by leg up to the run's end.
ROUND_DURATION_S = {"maximum": 1e6, "why": "seconds of movement per round; the walk is drawn up to the run's end"}
