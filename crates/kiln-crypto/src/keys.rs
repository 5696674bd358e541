//! Key providers: where key-encryption keys live, outside the database.
//!
//! - [`FileKeyProvider`]: a key file, created on first start with owner-only
//!   permissions (0600) and refused if anyone else can read it.
//! - [`EnvKeyProvider`]: keys given in an environment variable.
//!
//! Both hold several KEKs so that rotation can rewrap data keys while old
//! wraps still open; new wraps use the current one.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::LessSafeKey;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::envelope::{self, CryptoError, KeyBytes, KeyProvider};

/// The environment variable [`EnvKeyProvider`] reads: `ID:BASE64[,ID:BASE64...]`,
/// the first being current.
pub const KEK_ENV_VAR: &str = "KILN_KEK";

/// KEKs by id, the current one first.
struct Keyring {
    current: String,
    keys: BTreeMap<String, LessSafeKey>,
}

impl Keyring {
    fn wrap(&self, owner: &str, id: u32, key: &KeyBytes) -> Result<Vec<u8>, CryptoError> {
        let kek =
            self.keys.get(&self.current).ok_or_else(|| CryptoError::UnknownKek(self.current.clone()))?;
        envelope::wrap_with(&self.current, kek, owner, id, key)
    }

    fn unwrap(&self, owner: &str, id: u32, wrapped: &[u8]) -> Result<KeyBytes, CryptoError> {
        let kek_id = envelope::wrapped_kek_id(wrapped)?;
        let kek = self.keys.get(&kek_id).ok_or(CryptoError::UnknownKek(kek_id))?;
        envelope::unwrap_with(kek, owner, id, wrapped)
    }
}

fn parse_key(id: &str, b64: &str) -> Result<LessSafeKey, CryptoError> {
    let bytes = Zeroizing::new(
        STANDARD.decode(b64.trim()).map_err(|_| CryptoError::Provider(format!("key {id} is not base64")))?,
    );
    let raw: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| CryptoError::Provider(format!("key {id} is not 32 bytes")))?;
    let raw = Zeroizing::new(raw);
    envelope::kek_from_bytes(&raw)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn random_key() -> Result<Zeroizing<String>, CryptoError> {
    let mut raw = Zeroizing::new([0u8; 32]);
    SystemRandom::new().fill(raw.as_mut()).map_err(|_| CryptoError::Random)?;
    Ok(Zeroizing::new(STANDARD.encode(raw.as_ref())))
}

/// KEKs in a file outside the database.
pub struct FileKeyProvider {
    path: PathBuf,
    ring: Keyring,
}

impl fmt::Debug for FileKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileKeyProvider")
            .field("path", &self.path)
            .field("current", &self.ring.current)
            .finish()
    }
}

const FILE_HEADER: &str = "# Kiln key-encryption keys. Keep this file out of the database and its backups,\n\
# readable by Kiln's user only. Losing it makes every sealed value unreadable.\n";

impl FileKeyProvider {
    /// Open the key file, creating it (0600, one new key) if it does not
    /// exist. Returns the provider and whether the file was created.
    pub fn open_or_create(path: &Path) -> Result<(FileKeyProvider, bool), CryptoError> {
        let io = |e: std::io::Error| CryptoError::Provider(format!("{}: {e}", path.display()));
        // Several processes (nodes starting together on a new data
        // directory) must agree on one key: the check and the write happen
        // under an exclusive lock on a file beside the key file.
        let _lock = lock_beside(path).map_err(io)?;
        let created = match std::fs::metadata(path) {
            Ok(_) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = random_key()?;
                let text = Zeroizing::new(format!("{FILE_HEADER}current k1\nkey k1 {}\n", key.as_str()));
                write_private(path, &text, true).map_err(io)?;
                true
            }
            Err(e) => return Err(io(e)),
        };
        Ok((FileKeyProvider::open(path)?, created))
    }

    /// Open an existing key file.
    pub fn open(path: &Path) -> Result<FileKeyProvider, CryptoError> {
        let io = |e: std::io::Error| CryptoError::Provider(format!("{}: {e}", path.display()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(CryptoError::Provider(format!(
                    "{} is readable by other users (mode {:o}); run chmod 600 on it",
                    path.display(),
                    mode & 0o777
                )));
            }
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        let ring =
            parse_file(&text).map_err(|e| CryptoError::Provider(format!("{}: {e}", path.display())))?;
        Ok(FileKeyProvider { path: path.to_path_buf(), ring })
    }

    /// Add a new KEK and make it current. Old keys stay, so existing wraps
    /// open until they are rewrapped. Returns the new key's id.
    pub fn rotate(&mut self) -> Result<String, CryptoError> {
        let path = self.path.clone();
        let io = |e: std::io::Error| CryptoError::Provider(format!("{}: {e}", path.display()));
        let _lock = lock_beside(&path).map_err(io)?;
        // What another process wrote since this one opened the file counts.
        *self = FileKeyProvider::open(&self.path)?;
        let text = Zeroizing::new(std::fs::read_to_string(&self.path).map_err(io)?);
        let next =
            (1..).map(|n| format!("k{n}")).find(|id| !self.ring.keys.contains_key(id)).unwrap_or_default();
        let key = random_key()?;
        let mut lines: Vec<String> =
            text.lines().filter(|l| !l.starts_with("current ")).map(str::to_owned).collect();
        lines.push(format!("key {next} {}", key.as_str()));
        let body = Zeroizing::new(format!("{}\ncurrent {next}\n", lines.join("\n")));
        write_private(&self.path, &body, false).map_err(io)?;
        *self = FileKeyProvider::open(&self.path)?;
        Ok(next)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The audit trail's key from this file, if it has one.
    pub fn existing_audit_key(&self) -> Result<Option<crate::audit::AuditKey>, CryptoError> {
        let io = |e: std::io::Error| CryptoError::Provider(format!("{}: {e}", self.path.display()));
        let text = Zeroizing::new(std::fs::read_to_string(&self.path).map_err(io)?);
        let found =
            text.lines().find_map(|line| match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["audit", id, b64] if valid_id(id) => {
                    Some(((*id).to_owned(), Zeroizing::new((*b64).to_owned())))
                }
                _ => None,
            });
        found.map(|(id, b64)| crate::audit::AuditKey::from_base64(&id, &b64)).transpose()
    }

    /// The audit trail's key from this file, adding one (and saying so) if
    /// the file has none yet.
    pub fn audit_key(&self) -> Result<(crate::audit::AuditKey, bool), CryptoError> {
        if let Some(key) = self.existing_audit_key()? {
            return Ok((key, false));
        }
        let io = |e: std::io::Error| CryptoError::Provider(format!("{}: {e}", self.path.display()));
        let _lock = lock_beside(&self.path).map_err(io)?;
        // Another process may have added it while this one waited.
        if let Some(key) = self.existing_audit_key()? {
            return Ok((key, false));
        }
        let text = Zeroizing::new(std::fs::read_to_string(&self.path).map_err(io)?);
        let secret = crate::audit::AuditKey::new_secret()?;
        let body = Zeroizing::new(format!("{}\naudit a1 {}\n", text.trim_end(), secret.as_str()));
        write_private(&self.path, &body, false).map_err(io)?;
        Ok((crate::audit::AuditKey::from_base64("a1", &secret)?, true))
    }
}

fn parse_file(text: &str) -> Result<Keyring, String> {
    let mut current = None;
    let mut keys = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["current", id] if valid_id(id) => current = Some((*id).to_owned()),
            // The audit key is read by `FileKeyProvider::audit_key`.
            ["audit", id, _] if valid_id(id) => {}
            ["key", id, b64] if valid_id(id) => {
                let key = parse_key(id, b64).map_err(|e| format!("line {}: {e}", n + 1))?;
                if keys.insert((*id).to_owned(), key).is_some() {
                    return Err(format!("line {}: key {id} appears twice", n + 1));
                }
            }
            _ => {
                return Err(format!(
                    "line {} is not 'current ID', 'key ID BASE64' or 'audit ID BASE64'",
                    n + 1
                ));
            }
        }
    }
    let current = current.ok_or("no 'current' line names the key in use")?;
    if !keys.contains_key(&current) {
        return Err(format!("the current key {current} is not in the file"));
    }
    Ok(Keyring { current, keys })
}

/// Write `text` to `path` readable by the owner only, atomically.
/// An exclusive lock on `<path>.lock` (made 0600 if missing), held until
/// the returned file is dropped: serialises every change to the key file
/// across processes.
fn lock_beside(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path.with_extension("lock"))?;
    file.lock()?;
    Ok(file)
}

fn write_private(path: &Path, text: &str, create_new: bool) -> std::io::Result<()> {
    // A name of this process's own: another process writing meanwhile
    // (it should hold the lock, but a stale lock-less writer must not
    // clobber this one's half-written file) uses another.
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    if create_new && path.exists() {
        let _ = std::fs::remove_file(&tmp);
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the key file appeared meanwhile",
        ));
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Make the rename durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

impl KeyProvider for FileKeyProvider {
    fn current_kek(&self) -> String {
        self.ring.current.clone()
    }

    fn wrap(&self, owner: &str, data_key_id: u32, key: &KeyBytes) -> Result<Vec<u8>, CryptoError> {
        self.ring.wrap(owner, data_key_id, key)
    }

    fn unwrap(&self, owner: &str, data_key_id: u32, wrapped: &[u8]) -> Result<KeyBytes, CryptoError> {
        self.ring.unwrap(owner, data_key_id, wrapped)
    }
}

/// KEKs from the environment (for containers with a secret store).
pub struct EnvKeyProvider {
    ring: Keyring,
}

impl fmt::Debug for EnvKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvKeyProvider").field("current", &self.ring.current).finish()
    }
}

impl EnvKeyProvider {
    /// Parse `ID:BASE64[,ID:BASE64...]`; the first key is current.
    pub fn from_value(value: &str) -> Result<EnvKeyProvider, CryptoError> {
        let mut keys = BTreeMap::new();
        let mut current = None;
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (id, b64) = item
                .split_once(':')
                .ok_or_else(|| CryptoError::Provider(format!("{KEK_ENV_VAR} entries are ID:BASE64")))?;
            if !valid_id(id) {
                return Err(CryptoError::Provider(format!("{KEK_ENV_VAR}: {id:?} is not a key id")));
            }
            keys.insert(id.to_owned(), parse_key(id, b64)?);
            current.get_or_insert_with(|| id.to_owned());
        }
        let current = current.ok_or_else(|| CryptoError::Provider(format!("{KEK_ENV_VAR} is empty")))?;
        Ok(EnvKeyProvider { ring: Keyring { current, keys } })
    }
}

impl KeyProvider for EnvKeyProvider {
    fn current_kek(&self) -> String {
        self.ring.current.clone()
    }

    fn wrap(&self, owner: &str, data_key_id: u32, key: &KeyBytes) -> Result<Vec<u8>, CryptoError> {
        self.ring.wrap(owner, data_key_id, key)
    }

    fn unwrap(&self, owner: &str, data_key_id: u32, wrapped: &[u8]) -> Result<KeyBytes, CryptoError> {
        self.ring.unwrap(owner, data_key_id, wrapped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::DataKey;

    #[test]
    fn a_new_key_file_is_private_and_wraps_and_unwraps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.keys");
        let (provider, created) = FileKeyProvider::open_or_create(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let (_, dek) = DataKey::generate(1).unwrap();
        let wrapped = provider.wrap("inst", 1, &dek).unwrap();
        assert_eq!(*provider.unwrap("inst", 1, &wrapped).unwrap(), *dek);
        let (again, created) = FileKeyProvider::open_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(*again.unwrap("inst", 1, &wrapped).unwrap(), *dek);
    }

    #[test]
    fn rotation_keeps_old_wraps_openable_and_wraps_new_ones_with_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.keys");
        let (mut provider, _) = FileKeyProvider::open_or_create(&path).unwrap();
        let (_, dek) = DataKey::generate(1).unwrap();
        let old = provider.wrap("inst", 1, &dek).unwrap();
        assert_eq!(provider.rotate().unwrap(), "k2");
        assert_eq!(provider.current_kek(), "k2");
        let new = provider.wrap("inst", 1, &dek).unwrap();
        assert_eq!(envelope::wrapped_kek_id(&new).unwrap(), "k2");
        assert_eq!(*provider.unwrap("inst", 1, &old).unwrap(), *dek);
        assert_eq!(*provider.unwrap("inst", 1, &new).unwrap(), *dek);
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.keys");
        FileKeyProvider::open_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = FileKeyProvider::open(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn broken_key_files_and_env_values_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.keys");
        write_private(&path, "current k1\nkey k1 not-base64!!\n", true).unwrap();
        assert!(FileKeyProvider::open(&path).unwrap_err().to_string().contains("not base64"));
        std::fs::remove_file(&path).unwrap();
        write_private(&path, "key k1 AAAA\n", true).unwrap();
        assert!(FileKeyProvider::open(&path).is_err());
        assert!(EnvKeyProvider::from_value("").is_err());
        assert!(EnvKeyProvider::from_value("k1").is_err());
        let key = STANDARD.encode([7u8; 32]);
        let env = EnvKeyProvider::from_value(&format!("k2:{key},k1:{key}")).unwrap();
        assert_eq!(env.current_kek(), "k2");
    }

    #[test]
    fn the_audit_key_is_added_once_and_survives_kek_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.keys");
        let (mut file, _) = FileKeyProvider::open_or_create(&path).unwrap();
        assert!(file.existing_audit_key().unwrap().is_none());
        let (first, created) = file.audit_key().unwrap();
        assert!(created);
        let (again, created) = file.audit_key().unwrap();
        assert!(!created);
        assert_eq!(first.public_key_hex(), again.public_key_hex());
        assert_eq!(file.existing_audit_key().unwrap().unwrap().public_key_hex(), first.public_key_hex());
        file.rotate().unwrap();
        let (after, _) = FileKeyProvider::open(&path).unwrap().audit_key().unwrap();
        assert_eq!(first.public_key_hex(), after.public_key_hex());
    }

    #[test]
    fn a_wrap_from_an_unknown_kek_names_it() {
        let key = STANDARD.encode([7u8; 32]);
        let a = EnvKeyProvider::from_value(&format!("ka:{key}")).unwrap();
        let b = EnvKeyProvider::from_value(&format!("kb:{key}")).unwrap();
        let (_, dek) = DataKey::generate(1).unwrap();
        let wrapped = a.wrap("o", 1, &dek).unwrap();
        assert_eq!(b.unwrap("o", 1, &wrapped).unwrap_err(), CryptoError::UnknownKek("ka".into()));
    }
}

#[cfg(test)]
mod race_tests {
    use super::*;

    #[test]
    fn processes_creating_the_key_file_at_once_agree_on_one_key() {
        // Threads stand in for processes: the lock is a file lock, which
        // also excludes other open file descriptions in this process.
        for round in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kiln.keys");
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || {
                        let (p, _) = FileKeyProvider::open_or_create(&path).unwrap();
                        p.audit_key().unwrap();
                        p
                    })
                })
                .collect();
            let providers: Vec<FileKeyProvider> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let last = std::fs::read_to_string(&path).unwrap();
            assert_eq!(last.matches("\nkey ").count(), 1, "round {round}: one KEK in the file:\n{last}");
            assert_eq!(last.matches("\naudit ").count(), 1, "round {round}: one audit key:\n{last}");
            // What each process wraps, the file's key opens: they hold the same KEK.
            let now = FileKeyProvider::open(&path).unwrap();
            let key: KeyBytes = Zeroizing::new([7u8; 32]);
            for p in &providers {
                assert_eq!(p.current_kek(), "k1", "round {round}");
                let wrapped = p.wrap("o", 1, &key).unwrap();
                assert_eq!(*now.unwrap("o", 1, &wrapped).unwrap(), *key, "round {round}");
            }
        }
    }
}
