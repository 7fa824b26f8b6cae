"""Entry point of the relay process (kept apart from :mod:`vmsandbox.runtime.relay`, which the
package imports, so that ``python -m`` runs a module not already loaded)."""

from vmsandbox.runtime.relay import main

if __name__ == "__main__":  # pragma: no cover - runs as the relay
    main()
