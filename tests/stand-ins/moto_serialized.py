"""moto's server with one request at a time.

moto checks a conditional write's precondition and then writes without a lock, so two
concurrent conditional writes can both succeed (seen for DynamoDB on this project's machines; for S3
atomicity was only observed, never guaranteed). Real S3 and DynamoDB are atomic, and the
multi-process tests count overlapping critical sections, so the stand-in must be too: this
serves moto's own WSGI app behind one global lock, on 127.0.0.1 only.

Usage: python3 moto_serialized.py PORT
"""

import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

app = DomainDispatcherApplication(create_backend_app)
one_at_a_time = threading.Lock()


def serialized(environ, start_response):
    with one_at_a_time:
        # Consume the whole response inside the lock: moto's work happens while iterating.
        return [b"".join(app(environ, start_response))]


if __name__ == "__main__":
    run_simple("127.0.0.1", int(sys.argv[1]), serialized, threaded=True)
