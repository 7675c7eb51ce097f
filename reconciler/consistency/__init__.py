"""The consistency path: the Merkle index, anti-entropy sessions with peers over the control
channel, repair and its reports, settling before a session, peer liveness, tombstone GC."""
