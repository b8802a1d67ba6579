"""fake-gcs-server with the DELETE preconditions real GCS enforces.

fake-gcs-server checks `ifGenerationMatch` on uploads but ignores it on DELETE: a delete meant
for one generation of an object removes whatever generation is there. Real GCS answers 412.
dlock's release and forced release are such deletes, and a retried release (its first answer
lost) must not remove the next holder's lock: against fake-gcs-server alone, a faulted scale
run was seen to let a third holder in that way. This proxy sits in front of fake-gcs-server on
127.0.0.1 and makes the stand-in keep the rule: every write goes through one lock, and a DELETE
with `ifGenerationMatch` (or `ifMetagenerationMatch`) first reads the object's metadata and
answers 412 or 404 itself when the condition fails, so the check and the delete are atomic
with respect to every other write. Reads pass through concurrently.

Usage: python3 gcs_preconditions.py LISTEN_PORT UPSTREAM_PORT
"""

import http.client
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UPSTREAM = ("127.0.0.1", int(sys.argv[2]))
writes = threading.Lock()
local = threading.local()
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


def upstream():
    """One persistent upstream connection per proxy thread."""
    conn = getattr(local, "conn", None)
    if conn is None:
        conn = http.client.HTTPConnection(*UPSTREAM, timeout=60)
        local.conn = conn
    return conn


def call(method, path, body=None, headers=None):
    """One request upstream; reconnects once if the kept connection was closed."""
    for attempt in range(2):
        conn = upstream()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        except (http.client.HTTPException, ConnectionError, OSError):
            conn.close()
            local.conn = None
            if attempt == 1:
                raise


def failed_precondition(path):
    """For a conditional DELETE: the (status, message) to answer instead, or None to go on."""
    url = urllib.parse.urlsplit(path)
    query = urllib.parse.parse_qs(url.query)
    wanted = {
        field: query[param][0]
        for param, field in (("ifGenerationMatch", "generation"),
                             ("ifMetagenerationMatch", "metageneration"))
        if param in query
    }
    if not wanted:
        return None
    status, _, body = call("GET", url.path)
    if status == 404:
        return 404, "No such object"
    if status != 200:
        return None  # let fake-gcs-server answer for itself
    current = json.loads(body)
    for field, value in wanted.items():
        if str(current.get(field)) != value:
            return 412, f"Precondition Failed: {field} is {current.get(field)}, not {value}"
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The status line and headers go out in one write and the body in another: with Nagle's
    # algorithm the body waits for the client's delayed ACK (~40 ms) on a kept-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def relay(self):
        body = self.body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if self.command in ("GET", "HEAD"):
            answer = call(self.command, self.path, body, headers)
        else:
            with writes:
                refused = (failed_precondition(self.path)
                           if self.command == "DELETE" else None)
                if refused is None:
                    answer = call(self.command, self.path, body, headers)
                else:
                    status, message = refused
                    error = {"error": {"code": status, "message": message,
                                       "errors": [{"message": message, "reason": "conditionNotMet"
                                                   if status == 412 else "notFound"}]}}
                    answer = (status, [("Content-Type", "application/json")],
                              json.dumps(error).encode())
        status, response_headers, response_body = answer
        self.send_response(status)
        for name, value in response_headers:
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(response_body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response_body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = relay


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
