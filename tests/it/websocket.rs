//! WebSocket through the whole daemon: an app that speaks it (Python's standard library
//! only), a client that checks the handshake and every frame, over HTTP and HTTPS, and a
//! redeploy that an open WebSocket neither blocks nor outlives into new connections.

use berth_testkit::tls::{self, Trust};
use berth_testkit::websocket::{self, Message, WebSocket};

use crate::World;

/// A WebSocket echo app: greets each connection with `hello VERSION` (the server speaks
/// first), answers a text with `VERSION echo: TEXT`, a binary message with itself, a ping
/// with a pong and a close with a close. `GET /` without an upgrade is a plain page.
const WEBSOCKET_APP: &str = r#"
import base64, hashlib, os, struct
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "__VERSION__"
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

def read_exact(rfile, n):
    data = b""
    while len(data) < n:
        chunk = rfile.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data

def read_frame(rfile):
    head = read_exact(rfile, 2)
    if head is None:
        return None, None
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        length = struct.unpack(">H", read_exact(rfile, 2))[0]
    elif length == 127:
        length = struct.unpack(">Q", read_exact(rfile, 8))[0]
    mask = read_exact(rfile, 4) if head[1] & 0x80 else b"\0\0\0\0"
    data = read_exact(rfile, length) if length else b""
    key = (mask * (length // 4 + 1))[:length]
    payload = (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")
    return opcode, payload

def write_frame(wfile, opcode, payload):
    n = len(payload)
    if n < 126:
        head = struct.pack(">BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack(">BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, 127, n)
    wfile.write(head + payload)
    wfile.flush()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() != "websocket":
            body = ("plain " + VERSION).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        write_frame(self.wfile, 1, ("hello " + VERSION).encode())
        while True:
            opcode, payload = read_frame(self.rfile)
            if opcode is None:
                break
            if opcode == 8:
                write_frame(self.wfile, 8, payload[:2])
                break
            if opcode == 9:
                write_frame(self.wfile, 10, payload)
            elif opcode == 1:
                write_frame(self.wfile, 1, ("%s echo: " % VERSION).encode() + payload)
            elif opcode == 2:
                write_frame(self.wfile, 2, payload)
        self.close_connection = True

    def log_message(self, format, *args):
        print("request %s" % (format % args), flush=True)

print("websocket app listening on", os.environ["PORT"], flush=True)
ThreadingHTTPServer((os.environ["BIND_ADDRESS"], int(os.environ["PORT"])), Handler).serve_forever()
"#;

fn app_files(version: &str) -> [(&'static str, String); 2] {
    [
        ("app.py", WEBSOCKET_APP.replace("__VERSION__", version)),
        ("Procfile", "web: python3 app.py\n".to_owned()),
    ]
}

fn commit(repo: &berth_testkit::AppRepo, version: &str) {
    let files = app_files(version);
    let files: Vec<(&str, &str)> =
        files.iter().map(|(path, text)| (*path, text.as_str())).collect();
    repo.commit(&files, version).expect("commit");
}

/// A text round trip: what the client sends reaches the app, and the app's answer the client.
fn echo<S: std::io::Read + std::io::Write>(socket: &mut WebSocket<S>, version: &str, text: &str) {
    socket.send(&Message::Text(text.to_owned())).unwrap();
    assert_eq!(socket.recv().unwrap(), Message::Text(format!("{version} echo: {text}")));
}

#[test]
fn websocket_echo_both_ways_through_the_router_and_after_a_redeploy() {
    let world = World::start("websocket");
    let repo = world.repo("chat");
    commit(&repo, "w1");
    world.push_ok(&repo, "chat");
    let host = world.daemon.app_host("chat");

    let mut socket = websocket::connect(world.daemon.http_addr, &host, "/live").unwrap();
    assert_eq!(socket.recv().unwrap(), Message::Text("hello w1".into()), "the app spoke first");
    echo(&mut socket, "w1", "ping");
    // Large enough for the 64-bit length form and many TCP segments each way.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    socket.send(&Message::Binary(big.clone())).unwrap();
    assert_eq!(socket.recv().unwrap(), Message::Binary(big));
    socket.send(&Message::Ping(b"still there?".to_vec())).unwrap();
    assert_eq!(socket.recv().unwrap(), Message::Pong(b"still there?".to_vec()));
    echo(&mut socket, "w1", "again");

    // The same over TLS (wss://), HTTP/1.1 by ALPN.
    let https = world.daemon.https_addr.expect("the daemon serves HTTPS");
    let stream = tls::connect(https, &host, Trust::Anything, &[b"http/1.1"]).unwrap();
    let mut secure = WebSocket::handshake(stream, &host, "/live").unwrap();
    assert_eq!(secure.recv().unwrap(), Message::Text("hello w1".into()));
    echo(&mut secure, "w1", "over tls");
    secure.send(&Message::Close(Some(1000))).unwrap();
    assert_eq!(secure.recv().unwrap(), Message::Close(Some(1000)));

    // A redeploy with a WebSocket open: the deploy does not wait for it, and connections made
    // afterwards reach the new release.
    commit(&repo, "w2");
    world.push_ok(&repo, "chat");
    assert_eq!(world.get("chat", "/").body, "plain w2");
    let mut fresh = websocket::connect(world.daemon.http_addr, &host, "/live").unwrap();
    assert_eq!(fresh.recv().unwrap(), Message::Text("hello w2".into()));
    echo(&mut fresh, "w2", "after the redeploy");
    drop(socket);
}
