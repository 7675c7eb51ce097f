"""The bottom layer: what a change is, with no I/O.

Clocks (`vclock`, `hlc`), value digests (`value`, `digest`), the change event and its wire
format (`event`, `wire`), conflict resolution (`resolver`, `conflicts`), per-key metadata
(`metadata`), internal key and topic names (`keys`) and cluster hash slots (`slots`).
Everything above imports from here; nothing here imports from above.
"""
