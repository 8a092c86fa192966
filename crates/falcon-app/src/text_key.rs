//! The deployment's key for every hash of a text that Falcon stores: the request log's
//! `text_hash`, the idempotency fingerprint and the cache key are HMAC-SHA256 under it, so
//! a guessable text ("I love this") cannot be recovered from a row or a Redis key by
//! hashing guesses. Within one deployment equal texts still have equal hashes (rows can
//! be grouped, the cache and idempotency work across workers); without the key nobody can
//! tell which text a hash is of, and another deployment's hashes do not match.
//!
//! `TEXT_HASH_KEY` sets it (every worker of a deployment must have the same one); else it
//! is read from `TEXT_HASH_KEY_FILE`, created with 32 random bytes on the first start.

use std::fmt;
use std::io::Write;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The fewest bytes a key may have.
pub const MIN_KEY_BYTES: usize = 16;

/// HMAC-SHA256 under the deployment's key, ready to use (the keyed state is cloned per hash).
#[derive(Clone)]
pub struct TextKey(Hmac<Sha256>);

impl fmt::Debug for TextKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TextKey(<redacted>)")
    }
}

impl TextKey {
    /// A key of at least `MIN_KEY_BYTES` bytes.
    pub fn new(key: &[u8]) -> Result<Self, String> {
        if key.len() < MIN_KEY_BYTES {
            return Err(format!("the text hash key must have at least {MIN_KEY_BYTES} bytes"));
        }
        Hmac::<Sha256>::new_from_slice(key).map(Self).map_err(|e| e.to_string())
    }

    /// The key in `path` (hex, as this function writes it, or any text of at least
    /// `MIN_KEY_BYTES` bytes); a new random one, written there (mode 0600), if there is no
    /// file yet. Workers starting together agree: the file appears whole or not at all (a
    /// hard link of a finished temporary file), and the one that loses the race reads the
    /// winner's.
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        match Self::load(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            read => return read.map_err(|e| format!("cannot read the text hash key {}: {e}", path.display()))?,
        }
        // 32 bytes of key, and 8 to name this attempt's temporary file.
        let mut random = [0u8; 40];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
            .map_err(|e| format!("cannot read /dev/urandom for a new text hash key: {e}"))?;
        let (key, attempt) = random.split_at(32);
        let made = Self::publish(path, &hex::encode(key), &hex::encode(attempt));
        match made {
            Ok(()) => Self::new(key),
            // Another worker made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::load(path).map_err(|e| format!("cannot read the text hash key {}: {e}", path.display()))?
            }
            Err(e) => Err(format!("cannot create the text hash key {}: {e}", path.display())),
        }
    }

    /// The key in `path`; its own error (`InvalidData`) when it is too short.
    fn load(path: &Path) -> std::io::Result<Result<Self, String>> {
        let text = std::fs::read_to_string(path)?;
        let text = text.trim();
        let key = hex::decode(text).unwrap_or_else(|_| text.as_bytes().to_vec());
        Ok(Self::new(&key).map_err(|e| format!("{e} ({})", path.display())))
    }

    /// Writes `hex` to a temporary file beside `path`, then links it to `path`: atomic, and
    /// `AlreadyExists` if `path` is there already.
    fn publish(path: &Path, hex: &str, attempt: &str) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp-{attempt}"));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| writeln!(f, "{hex}").and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        written
    }

    fn digest(&self, parts: &[&[u8]]) -> String {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(part);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// What a row keeps of a text, and what identifies "the same request" to idempotency.
    pub fn hash(&self, text: &str) -> String {
        self.digest(&[text.as_bytes()])
    }

    /// The cache key of a text for a model (its name in the repository) and version. Both
    /// are part of the key, so neither another model nor a new version ever serves another's
    /// answers.
    pub fn cache_key(&self, model: &str, model_version: &str, normalized_text: &str) -> String {
        let parts: [&[u8]; 5] = [model.as_bytes(), &[0], model_version.as_bytes(), &[0], normalized_text.as_bytes()];
        format!("cache:{}", self.digest(&parts))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn it_is_hmac_sha256() {
        // RFC 4231, test case 2 ("Jefe" is shorter than our minimum: checked through the mac).
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let key = TextKey::new(b"a deployment key of 32 bytes....").unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"a deployment key of 32 bytes....").unwrap();
        mac.update(b"I love this");
        assert_eq!(key.hash("I love this"), hex::encode(mac.finalize().into_bytes()));
    }

    #[test]
    fn equal_texts_hash_alike_under_one_key_and_apart_under_another() {
        let a = TextKey::new(&[1; 32]).unwrap();
        let b = TextKey::new(&[2; 32]).unwrap();
        assert_eq!(a.hash("I love this"), a.hash("I love this"));
        assert_ne!(a.hash("I love this"), b.hash("I love this"));
        // Not the unsalted SHA-256 of the text (c876e4cc…), which anyone can compute.
        assert!(!a.hash("I love this").starts_with("c876e4cc"));
        assert_ne!(a.cache_key("m", "v1", "great movie"), a.cache_key("m", "v2", "great movie"));
        assert_ne!(a.cache_key("m", "v1", "great movie"), a.cache_key("n", "v1", "great movie"));
        assert_ne!(a.cache_key("m", "v1a", "b"), a.cache_key("m", "v1", "ab"));
        assert_ne!(a.cache_key("mv", "1", "x"), a.cache_key("m", "v1", "x"));
        assert!(a.cache_key("m", "v1", "x").starts_with("cache:"));
        assert!(TextKey::new(b"short").is_err());
        assert_eq!(format!("{a:?}"), "TextKey(<redacted>)");
    }

    #[test]
    fn a_key_file_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/text_hash.key");
        let first = TextKey::load_or_create(&path).unwrap();
        let again = TextKey::load_or_create(&path).unwrap();
        assert_eq!(first.hash("x"), again.hash("x"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let other = dir.path().join("other.key");
        assert_ne!(TextKey::load_or_create(&other).unwrap().hash("x"), first.hash("x"), "each new key is random");
        // Workers starting together agree on one key.
        let shared = dir.path().join("shared/text_hash.key");
        let hashes: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> =
                (0..8).map(|_| scope.spawn(|| TextKey::load_or_create(&shared).unwrap().hash("x"))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
        assert_eq!(std::fs::read_dir(shared.parent().unwrap()).unwrap().count(), 1, "no temporary file is left");
        std::fs::write(&path, "too short\n").unwrap();
        assert!(TextKey::load_or_create(&path).unwrap_err().contains("at least 16 bytes"));
    }
}
