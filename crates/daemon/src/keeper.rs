//! The socket keeper: a small process that holds the router's listening socket, so that it
//! stays open while the daemon restarts (an upgrade, a crash, `kill -9`). Connections that
//! arrive in between wait in the socket's backlog and are served by the next daemon, which
//! gets the same socket back from the keeper: no visitor sees a refused connection.
//!
//! The protocol, over `run/keeper.sock`: one byte, `P` (keep the descriptor sent with it),
//! `G` (send back what you keep: `F` with the descriptor, or `N`) or `Q` (quit).

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

fn send_with_fd(stream: &UnixStream, byte: u8, fd: Option<RawFd>) -> std::io::Result<()> {
    let data = [byte];
    let iov = [IoSlice::new(&data)];
    let fds: Vec<RawFd> = fd.into_iter().collect();
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(stream.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)?;
    Ok(())
}

fn receive_with_fd(stream: &UnixStream) -> std::io::Result<(u8, Option<OwnedFd>)> {
    let mut data = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut data)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let message =
        recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fd = None;
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for raw in fds {
                // SAFETY-free: the kernel just installed this descriptor in our table for us.
                fd = Some(owned(raw));
            }
        }
    }
    if message.bytes == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "keeper closed"));
    }
    Ok((data[0], fd))
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
    let mut kept: Option<OwnedFd> = None;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        match receive_with_fd(&stream) {
            Ok((b'P', Some(fd))) => {
                kept = Some(fd);
                let _ = (&stream).write_all(b"K");
            }
            Ok((b'G', _)) => {
                let fd = kept.as_ref().map(|fd| fd.as_fd().as_raw_fd());
                let _ = send_with_fd(&stream, if fd.is_some() { b'F' } else { b'N' }, fd);
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

/// The descriptor the keeper holds, when a keeper answers and holds one.
pub fn fetch(socket: &Path) -> Option<OwnedFd> {
    let stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    send_with_fd(&stream, b'G', None).ok()?;
    match receive_with_fd(&stream).ok()? {
        (b'F', fd) => fd,
        _ => None,
    }
}

/// Hands `fd` to the keeper, starting one (`exe keeper`) when none answers.
pub fn store(socket: &Path, exe: &Path, fd: &impl AsFd) -> std::io::Result<()> {
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
    send_with_fd(&stream, b'P', Some(fd.as_fd().as_raw_fd()))?;
    let mut ack = [0u8; 1];
    (&stream).read_exact(&mut ack)?;
    Ok(())
}

/// Tells the keeper to quit, closing the socket it holds.
pub fn quit(socket: &Path) {
    if let Ok(stream) = UnixStream::connect(socket) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        if send_with_fd(&stream, b'Q', None).is_ok() {
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
        assert!(fetch(&socket).is_none(), "a new keeper holds nothing");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        store(&socket, Path::new("/nonexistent"), &listener).unwrap();
        drop(listener);
        // Nobody accepts now, but the socket listens: a client connects and waits.
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let again = std::net::TcpListener::from(fetch(&socket).unwrap());
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
