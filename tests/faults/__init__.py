"""The randomized fault suite: three real regions, a seeded workload of every replicated
type (part of it through the failover client), a seeded nemesis of overlapping faults, a
history of every operation and a checker of the invariants once the system healed.

    python -m tests.faults --seeds 3 --minutes 1      # the soak (see README, Tests)
    python -m tests.faults --seed 7 --minutes 1       # replay one seed
"""
