"""`reconciler resync --config FILE --peer REGION`: the peer's whole state, streamed here."""

from reconciler.commands.session import Resync

add_arguments = Resync.add_arguments
run = Resync.run
