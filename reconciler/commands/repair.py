"""`reconciler repair --config FILE --peer REGION [--dry-run]`."""

from reconciler.commands.session import Repair

add_arguments = Repair.add_arguments
run = Repair.run
