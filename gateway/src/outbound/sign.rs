//! Webhook signatures as Standard Webhooks 1.0 defines them: HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}` with the secret's bytes (`whsec_<base64>`), sent as
//! `webhook-signature: v1,<base64>` (one entry per valid secret, space-separated, while a
//! rotation lasts). Any Standard Webhooks library, or ten lines of Python's `hmac`, verify it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Why a secret is unusable.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SignError {
    #[error(
        "a webhook secret is whsec_ followed by base64 (e.g. whsec_{example})",
        example = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    )]
    Format,
    #[error("a webhook secret needs 24 to 64 bytes after base64 decoding (this one has {0})")]
    Length(usize),
}

/// A new random secret (24 bytes).
pub fn new_secret() -> String {
    let mut b = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut b);
    format!("whsec_{}", STANDARD.encode(b))
}

/// The key bytes of a `whsec_` secret.
pub fn key_of(secret: &str) -> Result<Vec<u8>, SignError> {
    let b64 = secret.strip_prefix("whsec_").ok_or(SignError::Format)?;
    let key = STANDARD.decode(b64).map_err(|_| SignError::Format)?;
    if !(24..=64).contains(&key.len()) {
        return Err(SignError::Length(key.len()));
    }
    Ok(key)
}

/// The `v1,<base64>` signature of one message with one key.
pub fn signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length: this cannot fail
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header: one entry per secret. Secrets that do not parse are
/// skipped (they were validated when they were set).
pub fn header(secrets: &[&str], id: &str, timestamp: u64, body: &[u8]) -> String {
    secrets
        .iter()
        .filter_map(|s| key_of(s).ok())
        .map(|k| signature(&k, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn matches_the_specification_example() {
        let key = key_of("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let sig = signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_signs_with_both_secrets() {
        let a = new_secret();
        let b = new_secret();
        let h = header(&[&a, &b], "evt_1", 1, b"{}");
        let parts: Vec<_> = h.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_ne!(parts[0], parts[1]);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert_eq!(
            key_of("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SignError::Format)
        );
        assert_eq!(key_of("whsec_!!!"), Err(SignError::Format));
        assert_eq!(key_of("whsec_AAAA"), Err(SignError::Length(3)));
        assert!(key_of(&new_secret()).is_ok());
    }
}
