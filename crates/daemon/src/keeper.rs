//! The socket keeper: a small process that holds the router's listening socket, so that it
//! stays open while the daemon restarts (an upgrade, a crash, `kill -9`). Connections that
//! arrive in between wait in the socket's backlog and are served by the next daemon, which
//! gets the same socket back from the keeper: no visitor sees a refused connection.
//!
//! The protocol, over `run/keeper.sock`: one byte, `P` (keep the descriptors sent with it, in
//! place of what was kept), `G` (send back what you keep: `F` with the descriptors, or `N`) or
//! `Q` (quit).

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// The most descriptors one message carries: the router's HTTP and HTTPS sockets, and the
/// app ports' (`ports:add`). Those beyond are not kept, and refuse while the daemon restarts.
const MAX_FDS: usize = 64;

fn send_with_fds(stream: &UnixStream, byte: u8, fds: &[RawFd]) -> std::io::Result<()> {
    let data = [byte];
    let iov = [IoSlice::new(&data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(stream.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)?;
    Ok(())
}

fn receive_with_fds(stream: &UnixStream) -> std::io::Result<(u8, Vec<OwnedFd>)> {
    let mut data = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut data)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let message =
        recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raws) = cmsg {
            fds.extend(raws.into_iter().map(owned));
        }
    }
    if message.bytes == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "keeper closed"));
    }
    Ok((data[0], fds))
}

/// Takes ownership of a descriptor that SCM_RIGHTS delivered.
#[allow(unsafe_code, reason = "a descriptor received with SCM_RIGHTS is ours to own")]
fn owned(raw: RawFd) -> OwnedFd {
    // SAFETY: recvmsg installed `raw` in this process's table for this call alone; nothing
    // else refers to it, so owning (and eventually closing) it is sound.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// Runs the keeper until told to quit (`berth keeper`).
pub fn serve(socket: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    let mut kept: Vec<OwnedFd> = Vec::new();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        match receive_with_fds(&stream) {
            Ok((b'P', fds)) if !fds.is_empty() => {
                kept = fds;
                let _ = (&stream).write_all(b"K");
            }
            Ok((b'G', _)) => {
                let fds: Vec<RawFd> = kept.iter().map(|fd| fd.as_fd().as_raw_fd()).collect();
                let _ = send_with_fds(&stream, if fds.is_empty() { b'N' } else { b'F' }, &fds);
            }
            Ok((b'Q', _)) => {
                let _ = (&stream).write_all(b"K");
                let _ = std::fs::remove_file(socket);
                return Ok(());
            }
            _ => {}
        }
    }
    Ok(())
}

/// The descriptors the keeper holds (none when no keeper answers).
pub fn fetch(socket: &Path) -> Vec<OwnedFd> {
    let Ok(stream) = UnixStream::connect(socket) else { return Vec::new() };
    if stream.set_read_timeout(Some(Duration::from_secs(5))).is_err()
        || send_with_fds(&stream, b'G', &[]).is_err()
    {
        return Vec::new();
    }
    match receive_with_fds(&stream) {
        Ok((b'F', fds)) => fds,
        _ => Vec::new(),
    }
}

/// Hands `fds` to the keeper (in place of what it kept), starting one (`exe keeper`) when
/// none answers.
pub fn store(socket: &Path, exe: &Path, fds: &[&dyn AsFd]) -> std::io::Result<()> {
    let stream = match UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(_) => {
            use std::os::unix::process::CommandExt;
            std::process::Command::new(exe)
                .arg("keeper")
                .arg("--socket")
                .arg(socket)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                // Outside the daemon's group, so it outlives the daemon.
                .process_group(0)
                .spawn()?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match UnixStream::connect(socket) {
                    Ok(stream) => break stream,
                    Err(err) if Instant::now() > deadline => return Err(err),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let raws: Vec<RawFd> = fds.iter().map(|fd| fd.as_fd().as_raw_fd()).collect();
    send_with_fds(&stream, b'P', &raws)?;
    let mut ack = [0u8; 1];
    (&stream).read_exact(&mut ack)?;
    Ok(())
}

/// Tells the keeper to quit, closing the socket it holds.
pub fn quit(socket: &Path) {
    if let Ok(stream) = UnixStream::connect(socket) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        if send_with_fds(&stream, b'Q', &[]).is_ok() {
            let mut ack = [0u8; 1];
            let _ = (&stream).read_exact(&mut ack);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_listener_survives_its_first_owner() {
        let dir = std::env::temp_dir().join(format!("berth-keeper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("keeper.sock");
        let server = {
            let socket = socket.clone();
            std::thread::spawn(move || serve(&socket))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "the keeper did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(fetch(&socket).is_empty(), "a new keeper holds nothing");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        store(&socket, Path::new("/nonexistent"), &[&listener, &other]).unwrap();
        drop(listener);
        // Nobody accepts now, but the socket listens: a client connects and waits.
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let kept = fetch(&socket);
        assert_eq!(kept.len(), 2);
        let again = std::net::TcpListener::from(kept.into_iter().next().unwrap());
        assert_eq!(again.local_addr().unwrap(), addr);
        client.write_all(b"hello").unwrap();
        let (mut accepted, _) = again.accept().unwrap();
        let mut buffer = [0u8; 5];
        accepted.read_exact(&mut buffer).unwrap();
        assert_eq!(&buffer, b"hello");

        quit(&socket);
        server.join().unwrap().unwrap();
        assert!(!socket.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
