"""`reconciler verify --config FILE --peer REGION`: exit 1 when the regions differ."""

from reconciler.commands.session import Verify

add_arguments = Verify.add_arguments
run = Verify.run
