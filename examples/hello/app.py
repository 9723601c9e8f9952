"""A tiny web app for Berth: answers every request with a greeting from its environment."""

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = "{} from {} (release {})\n".format(
            os.environ.get("GREETING", "Hello"),
            os.environ.get("BERTH_APP", "an app"),
            os.environ.get("BERTH_RELEASE", "?"),
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        print("%s %s" % (self.address_string(), format % args), flush=True)


if __name__ == "__main__":
    address = (os.environ.get("BIND_ADDRESS", "127.0.0.1"), int(os.environ["PORT"]))
    print("listening on %s:%d" % address, flush=True)
    ThreadingHTTPServer(address, Hello).serve_forever()
