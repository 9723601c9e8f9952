//! A minimal WebSocket client (RFC 6455) for tests: the opening handshake, checked down to
//! `Sec-WebSocket-Accept`, masked frames out and unmasked frames in, over any byte stream (a
//! plain socket, or TLS from [`crate::tls::connect`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::{DEADLINE, HttpResponse, parse_response};

/// The GUID RFC 6455 appends to the client's key before hashing it.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A frame's worth of message (continuations are joined before they are returned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The status code, when the peer gave one.
    Close(Option<u16>),
}

/// One client connection after a successful opening handshake.
#[derive(Debug)]
pub struct WebSocket<S> {
    stream: S,
    /// Bytes read past the handshake's headers (a server may send a frame at once).
    pending: Vec<u8>,
    /// State of the generator of masking keys (clients must mask every frame).
    mask_state: u64,
}

/// Opens a WebSocket at `ws://host{path}` through `addr` (the router, say).
pub fn connect(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<WebSocket<TcpStream>> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(DEADLINE))?;
    WebSocket::handshake(stream, host, path)
}

impl<S: Read + Write> WebSocket<S> {
    /// Sends the opening handshake for `host` and `path` over `stream` and checks the answer:
    /// `101 Switching Protocols`, `Upgrade: websocket`, and the accept value RFC 6455 derives
    /// from the key sent. Any other answer is an error that shows it.
    pub fn handshake(mut stream: S, host: &str, path: &str) -> anyhow::Result<WebSocket<S>> {
        let mut mask_state = seed();
        let key_bytes: Vec<u8> = (0..16).map(|_| next_random(&mut mask_state) as u8).collect();
        let key = BASE64.encode(key_bytes);
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )?;
        stream.flush()?;
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                bail!("the connection closed during the handshake: {:?}", lossy(&received));
            }
            received.extend_from_slice(&chunk[..n]);
        };
        let head: HttpResponse = parse_response(&received[..end])?;
        let upgrade = head.header("upgrade").unwrap_or_default();
        if head.status != 101 || !upgrade.eq_ignore_ascii_case("websocket") {
            bail!("not a WebSocket handshake: {} {:?}", head.status, head.headers);
        }
        let accept = head.header("sec-websocket-accept").context("no Sec-WebSocket-Accept")?;
        if accept != accept_key(&key) {
            bail!("Sec-WebSocket-Accept is {accept:?}, not {:?}", accept_key(&key));
        }
        Ok(WebSocket { stream, pending: received[end..].to_vec(), mask_state })
    }

    /// Sends `message` as one masked frame.
    pub fn send(&mut self, message: &Message) -> io::Result<()> {
        let (opcode, payload): (u8, Vec<u8>) = match message {
            Message::Text(text) => (0x1, text.as_bytes().to_vec()),
            Message::Binary(data) => (0x2, data.clone()),
            Message::Close(None) => (0x8, Vec::new()),
            Message::Close(Some(code)) => (0x8, code.to_be_bytes().to_vec()),
            Message::Ping(data) => (0x9, data.clone()),
            Message::Pong(data) => (0xA, data.clone()),
        };
        let mask = (next_random(&mut self.mask_state) as u32).to_be_bytes();
        let frame = encode_frame(opcode, &payload, mask);
        self.stream.write_all(&frame)?;
        self.stream.flush()
    }

    /// Receives the next message, joining continuation frames.
    pub fn recv(&mut self) -> anyhow::Result<Message> {
        let mut opcode = None;
        let mut payload = Vec::new();
        loop {
            let head = self.read_exact(2)?;
            let fin = head[0] & 0x80 != 0;
            let frame_opcode = head[0] & 0x0F;
            let masked = head[1] & 0x80 != 0;
            let length = match head[1] & 0x7F {
                126 => u16::from_be_bytes(self.read_exact(2)?.try_into().unwrap()) as usize,
                127 => u64::from_be_bytes(self.read_exact(8)?.try_into().unwrap()) as usize,
                n => n as usize,
            };
            if masked {
                bail!("the server masked a frame, which RFC 6455 forbids");
            }
            let data = self.read_exact(length)?;
            if frame_opcode >= 0x8 {
                // Control frames may come between the fragments of a message.
                return Ok(match frame_opcode {
                    0x8 => Message::Close(
                        (data.len() >= 2).then(|| u16::from_be_bytes([data[0], data[1]])),
                    ),
                    0x9 => Message::Ping(data),
                    0xA => Message::Pong(data),
                    other => bail!("unknown control opcode {other:#x}"),
                });
            }
            if frame_opcode != 0 {
                opcode = Some(frame_opcode);
            }
            payload.extend_from_slice(&data);
            if fin {
                break;
            }
        }
        match opcode {
            Some(0x1) => Ok(Message::Text(String::from_utf8(payload)?)),
            Some(0x2) => Ok(Message::Binary(payload)),
            other => bail!("unexpected data opcode {other:?}"),
        }
    }

    fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let from_pending = n.min(self.pending.len());
        let mut out: Vec<u8> = self.pending.drain(..from_pending).collect();
        if out.len() < n {
            let start = out.len();
            out.resize(n, 0);
            self.stream.read_exact(&mut out[start..])?;
        }
        Ok(out)
    }
}

/// One client frame (FIN set, masked with `mask`).
fn encode_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
    frame
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with.
pub fn accept_key(key: &str) -> String {
    BASE64.encode(sha1(format!("{key}{GUID}").as_bytes()))
}

/// SHA-1 (FIPS 180-4), which the WebSocket handshake uses; nothing else here needs it.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in message.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes(word.try_into().unwrap());
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, word) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let temp = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*word);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = temp;
        }
        for (state, value) in h.iter_mut().zip([a, b, c, d, e]) {
            *state = state.wrapping_add(value);
        }
    }
    let mut out = [0u8; 20];
    for (chunk, word) in out.chunks_mut(4).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// Keys and masks need not be secret in tests, only different: a clock-seeded xorshift.
fn seed() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 32)) | 1
}

fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_the_standard_vectors() {
        let hex = |bytes: [u8; 20]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(hex(sha1(b"abc")), "a9993e364706816aba3e25717850c26c9cd0d89d");
        let long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(hex(sha1(long)), "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
    }

    #[test]
    fn accept_key_is_rfc_6455s_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn frames_carry_their_length_in_the_right_form_and_are_masked() {
        let mask = [1, 2, 3, 4];
        let small = encode_frame(0x1, b"hi", mask);
        assert_eq!(small, [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
        let medium = encode_frame(0x2, &[0; 300], mask);
        assert_eq!(&medium[..4], &[0x82, 0x80 | 126, 0x01, 0x2C]);
        assert_eq!(medium.len(), 4 + 4 + 300);
        let large = encode_frame(0x2, &[0; 70_000], mask);
        assert_eq!(&large[..10], &[0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70]);
    }

    #[test]
    fn server_frames_are_read_across_the_handshake_leftovers() {
        // An unmasked text frame split into a fragment and a continuation, then a close.
        let wire: Vec<u8> =
            [&[0x01, 0x03][..], b"hel", &[0x80, 0x02], b"lo", &[0x88, 0x02, 0x03, 0xE8]].concat();
        let (pending, rest) = wire.split_at(3);
        let mut socket = WebSocket {
            stream: io::Cursor::new(rest.to_vec()),
            pending: pending.to_vec(),
            mask_state: 1,
        };
        assert_eq!(socket.recv().unwrap(), Message::Text("hello".into()));
        assert_eq!(socket.recv().unwrap(), Message::Close(Some(1000)));
        assert!(socket.recv().is_err());
    }
}
