"""``python -m devtools.stack COMMAND``: the Makefile's `make up|down|restart|status|token|sa-key|cert`."""
import sys
import warnings

if __name__ == "__main__":
    # eventlet (imported by the blob stores) warns about its own deprecation on import: noise here.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    from devtools.stack.main import main
    sys.exit(main())
