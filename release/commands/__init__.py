"""What each `inv` command does, behind the thin tasks in tasks.py: one module per capability.

- context.py — one command's world (config, environment, AWS, ledger, clock, printer), the
  account guard, SSH to the environment's instances;
- bake.py — `inv bake`;
- deploy.py — `inv release`, `rollback`, `resume`, `adopt`;
- status.py — `inv status`, `history`;
- images.py — `inv ami.cleanup`, `ami.deprecate`, `ami.promote`;
- fleet.py — `inv fleet.verify`;
- sandbox.py — `inv sandbox.*`;
- views.py — how the release commands show a plan, an unfinished release and the gate.

Every user mistake is a KilnError (one line, an exit code); printing goes through ui.UI.
"""
