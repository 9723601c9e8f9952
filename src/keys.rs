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

/// What the forced command of a key says besides its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOptions<'a> {
    /// Berth's root, when not the default.
    pub root: Option<&'a Path>,
    /// The key's name, shown in release history.
    pub name: &'a str,
    /// Whether the key may add and remove keys.
    pub admin: bool,
    /// The authorized_keys file, when not `~/.ssh/authorized_keys`.
    pub keys_file: Option<&'a Path>,
}

/// The `authorized_keys` line for a key.
pub fn authorized_line(key: &PublicKey, exe: &Path, options: &KeyOptions<'_>) -> String {
    let mut command = shell_word(&exe.display().to_string());
    if let Some(root) = options.root {
        let _ = write!(command, " --root {}", shell_word(&root.display().to_string()));
    }
    let _ = write!(command, " ssh --key {} --name {}", key.fingerprint(), shell_word(options.name));
    if options.admin {
        command.push_str(" --admin");
    }
    if let Some(file) = options.keys_file {
        let _ = write!(command, " --keys-file {}", shell_word(&file.display().to_string()));
    }
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

/// A key name: lower-case letters, digits, `.`, `_` and `-`, up to 64 characters.
pub fn validate_key_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if !ok {
        bail!(
            "invalid key name {name:?}: use lower-case letters, digits, '.', '_' and '-' (for example alice-laptop)"
        );
    }
    Ok(())
}

/// A name for a key from its comment (`alice@laptop` → `alice-laptop`), else `admin`.
fn name_from_comment(comment: &str) -> String {
    let name: String = comment
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' })
        .take(64)
        .collect();
    let name = name.trim_matches('-').to_owned();
    if name.is_empty() { "admin".to_owned() } else { name }
}

/// One authorised key, as `keys` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub name: String,
    pub fingerprint: String,
    pub admin: bool,
    pub line: String,
}

/// The Berth keys of an authorized_keys text: lines whose forced command is `berth ssh`.
pub fn list_keys(text: &str) -> Vec<KeyEntry> {
    text.lines()
        .filter_map(|line| {
            let command = line.strip_prefix("command=\"")?.split('"').next()?;
            let words: Vec<&str> = command.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "ssh")?;
            let flag = |name: &str| {
                words[at..].iter().position(|w| *w == name).and_then(|i| words.get(at + i + 1))
            };
            Some(KeyEntry {
                fingerprint: flag("--key")?.to_string(),
                name: flag("--name")
                    .map(|n| n.trim_matches('\'').to_owned())
                    .unwrap_or_else(|| "admin".to_owned()),
                admin: words[at..].contains(&"--admin") || !words[at..].contains(&"--name"),
                line: line.to_owned(),
            })
        })
        .collect()
}

/// The key commands (`keys`, `keys:add NAME`, `keys:remove NAME`), run by the owner of the
/// authorized_keys file: the ssh entry for a key (`admin` when the key is), or a person on
/// the server.
pub fn keys_command(
    words: &[String],
    path: &Path,
    root: Option<&Path>,
    admin: bool,
    input: &mut dyn Read,
) -> anyhow::Result<u8> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let keys = list_keys(&text);
    match words {
        [command] if command == "keys" => {
            println!("NAME  FINGERPRINT  ADMIN");
            for key in &keys {
                println!(
                    "{}  {}  {}",
                    key.name,
                    key.fingerprint,
                    if key.admin { "yes" } else { "no" }
                );
            }
            Ok(0)
        }
        [command, name] if command == "keys:add" || command == "keys:remove" => {
            if !admin {
                eprintln!("berth: only admin keys (those setup:ssh added) may add or remove keys");
                return Ok(crate::EXIT_USAGE);
            }
            validate_key_name(name)?;
            if command == "keys:add" {
                let mut pem = String::new();
                input.read_to_string(&mut pem).context("cannot read the public key from stdin")?;
                let key = PublicKey::parse(&pem)?;
                if keys.iter().any(|k| k.name == *name) {
                    bail!(
                        "there is a key named {name} already; remove it first or pick another name"
                    );
                }
                if text.lines().any(|l| l.split_whitespace().any(|w| w == key.blob)) {
                    bail!("this key ({}) is authorised already", key.fingerprint());
                }
                let exe = std::env::current_exe()?;
                let options = KeyOptions { root, name, admin: false, keys_file: Some(path) };
                let mut new = text.clone();
                if !new.is_empty() && !new.ends_with('\n') {
                    new.push('\n');
                }
                new.push_str(&authorized_line(&key, &exe, &options));
                new.push('\n');
                write_keys(path, &new)?;
                println!(
                    "added key {name} ({}): it can push and run Berth commands",
                    key.fingerprint()
                );
            } else {
                let Some(entry) = keys.iter().find(|k| k.name == *name) else {
                    bail!("there is no key named {name} (`keys` lists them)");
                };
                if entry.admin {
                    bail!(
                        "{name} is an admin key; remove it by editing {} on the server",
                        path.display()
                    );
                }
                let new: String =
                    text.lines().filter(|l| *l != entry.line).map(|l| format!("{l}\n")).collect();
                write_keys(path, &new)?;
                println!("removed key {name}");
            }
            Ok(0)
        }
        _ => {
            eprintln!("berth: usage: keys | keys:add NAME < key.pub | keys:remove NAME");
            Ok(crate::EXIT_USAGE)
        }
    }
}

fn write_keys(path: &Path, text: &str) -> anyhow::Result<()> {
    let temp = path.with_extension("berth-tmp");
    std::fs::write(&temp, text).with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&temp, path).with_context(|| format!("cannot replace {}", path.display()))
}

pub fn setup_ssh(
    public_key: &Path,
    authorized_keys: Option<PathBuf>,
    root: Option<&Path>,
    name: Option<&str>,
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
    let name = match name {
        Some(name) => name.to_owned(),
        None => name_from_comment(&key.comment),
    };
    validate_key_name(&name)?;
    let keys_file = authorized_keys.clone();
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
    let options = KeyOptions { root, name: &name, admin: true, keys_file: keys_file.as_deref() };
    text.push_str(&authorized_line(&key, &exe, &options));
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
        let options = KeyOptions { root: None, name: "alice-laptop", admin: true, keys_file: None };
        let line = authorized_line(&key, Path::new("/usr/local/bin/berth"), &options);
        assert_eq!(
            line,
            format!(
                "command=\"/usr/local/bin/berth ssh --key {} --name alice-laptop --admin\",\
                 no-agent-forwarding,no-port-forwarding,no-X11-forwarding,no-user-rc {} alice@laptop",
                key.fingerprint(),
                KEY.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
            )
        );
        let options = KeyOptions {
            root: Some(Path::new("/srv/b")),
            name: "bob",
            admin: false,
            keys_file: Some(Path::new("/tmp/keys")),
        };
        let line = authorized_line(&key, Path::new("/opt/my berth/berth"), &options);
        assert!(
            line.starts_with("command=\"'/opt/my berth/berth' --root /srv/b ssh --key SHA256:")
        );
        assert!(line.contains(" --name bob --keys-file /tmp/keys\","), "{line}");
        let listed = list_keys(&line);
        assert_eq!((listed[0].name.as_str(), listed[0].admin), ("bob", false));
        assert_eq!(listed[0].fingerprint, key.fingerprint());
    }

    #[test]
    fn key_names_are_checked_and_made_from_comments() {
        assert!(validate_key_name("alice-laptop.2").is_ok());
        assert!(validate_key_name("Alice").is_err());
        assert!(validate_key_name("a b").is_err());
        assert_eq!(name_from_comment("Alice@Laptop"), "alice-laptop");
        assert_eq!(name_from_comment(""), "admin");
    }
}
