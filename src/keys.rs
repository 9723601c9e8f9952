//! `setup:ssh`: authorising a public key with a forced command in `authorized_keys`.

use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};

/// The restrictions every Berth key gets besides its forced command.
const KEY_OPTIONS: &str = "no-agent-forwarding,no-port-forwarding,no-X11-forwarding,no-user-rc";

/// A parsed OpenSSH public key line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kind: String,
    pub blob: String,
    pub comment: String,
}

impl PublicKey {
    /// Parses `TYPE BASE64 [COMMENT]`, as in an `id_*.pub` file.
    pub fn parse(text: &str) -> anyhow::Result<PublicKey> {
        let line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'));
        let Some(line) = line else {
            bail!("the key file is empty; give a public key such as ~/.ssh/id_ed25519.pub")
        };
        let mut parts = line.splitn(3, char::is_whitespace);
        let kind = parts.next().unwrap_or_default();
        let blob = parts.next().unwrap_or_default().trim();
        let comment = parts.next().unwrap_or_default().trim();
        let known =
            kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-") || kind.starts_with("sk-");
        if !known {
            bail!(
                "this is not an OpenSSH public key (it starts with {:?}); give the .pub file, \
                 e.g. ~/.ssh/id_ed25519.pub, never the private key",
                kind.chars().take(20).collect::<String>()
            );
        }
        let decoded = STANDARD.decode(blob).context("the key's base64 part is damaged")?;
        // The blob starts with its own type name; a mismatch means a pasted-together key.
        let name_len =
            decoded.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
        let inner = name_len.and_then(|n| decoded.get(4..4 + n));
        if inner != Some(kind.as_bytes()) {
            bail!("the key's data does not match its type {kind}; copy the .pub file again");
        }
        Ok(PublicKey { kind: kind.to_owned(), blob: blob.to_owned(), comment: comment.to_owned() })
    }

    /// The fingerprint `ssh-keygen -l` shows: `SHA256:` and the unpadded base64 of the digest.
    pub fn fingerprint(&self) -> String {
        let decoded = STANDARD.decode(&self.blob).unwrap_or_default();
        format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(decoded)))
    }
}

/// The `authorized_keys` line for a key.
pub fn authorized_line(key: &PublicKey, exe: &Path, root: Option<&Path>) -> String {
    let mut command = shell_word(&exe.display().to_string());
    if let Some(root) = root {
        let _ = write!(command, " --root {}", shell_word(&root.display().to_string()));
    }
    let _ = write!(command, " ssh --key {}", key.fingerprint());
    let mut line = format!("command=\"{command}\",{KEY_OPTIONS} {} {}", key.kind, key.blob);
    if !key.comment.is_empty() {
        line.push(' ');
        line.push_str(&key.comment);
    }
    line
}

/// Quotes a word for the shell sshd runs the forced command with, only when it needs it
/// (double quotes cannot appear: they would end the `command="..."` option).
fn shell_word(word: &str) -> String {
    if word.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c)) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

pub fn setup_ssh(
    public_key: &Path,
    authorized_keys: Option<PathBuf>,
    root: Option<&Path>,
) -> anyhow::Result<u8> {
    let text = if public_key == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read the key from stdin")?;
        text
    } else {
        std::fs::read_to_string(public_key)
            .with_context(|| format!("cannot read the public key {}", public_key.display()))?
    };
    let key = PublicKey::parse(&text)?;
    let path = match authorized_keys {
        Some(path) => path,
        None => {
            let home =
                std::env::var_os("HOME").context("HOME is not set; pass --authorized-keys FILE")?;
            PathBuf::from(home).join(".ssh").join("authorized_keys")
        }
    };
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let fingerprint = key.fingerprint();
    if existing.lines().any(|line| line.split_whitespace().any(|word| word == key.blob)) {
        println!("key {fingerprint} is already authorised in {}", path.display());
        return Ok(0);
    }
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let exe = std::env::current_exe()?;
    let mut text = existing;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&authorized_line(&key, &exe, root));
    text.push('\n');
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    println!("authorised key {fingerprint} ({}) in {}", key.kind, path.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real ed25519 public key and the fingerprint `ssh-keygen -lf` prints for it.
    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop\n";

    #[test]
    fn parses_a_public_key_and_its_fingerprint() {
        let key = PublicKey::parse(KEY).unwrap();
        assert_eq!(key.kind, "ssh-ed25519");
        assert_eq!(key.comment, "alice@laptop");
        assert!(key.fingerprint().starts_with("SHA256:"));
        assert_eq!(key.fingerprint().len(), "SHA256:".len() + 43);
    }

    #[test]
    fn refuses_what_is_not_a_public_key() {
        let private = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n";
        assert!(
            PublicKey::parse(private).unwrap_err().to_string().contains("never the private key")
        );
        assert!(PublicKey::parse("").unwrap_err().to_string().contains("empty"));
        assert!(PublicKey::parse("ssh-ed25519 !!!").unwrap_err().to_string().contains("base64"));
        let wrong_type = KEY.replace("ssh-ed25519", "ssh-rsa");
        assert!(PublicKey::parse(&wrong_type).unwrap_err().to_string().contains("does not match"));
    }

    #[test]
    fn the_line_forces_the_berth_command_with_restrictions() {
        let key = PublicKey::parse(KEY).unwrap();
        let line = authorized_line(&key, Path::new("/usr/local/bin/berth"), None);
        assert_eq!(
            line,
            format!(
                "command=\"/usr/local/bin/berth ssh --key {}\",no-agent-forwarding,\
                 no-port-forwarding,no-X11-forwarding,no-user-rc {} alice@laptop",
                key.fingerprint(),
                KEY.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
            )
        );
        let line =
            authorized_line(&key, Path::new("/opt/my berth/berth"), Some(Path::new("/srv/b")));
        assert!(
            line.starts_with("command=\"'/opt/my berth/berth' --root /srv/b ssh --key SHA256:")
        );
    }
}
