"""The cluster operator: admits, schedules and looks after every VMSandbox (``vmsandbox-operator``)."""
