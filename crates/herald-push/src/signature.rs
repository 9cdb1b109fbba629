//! Standard Webhooks signing: secrets (`whsec_` + base64 of the key) and the
//! `webhook-signature` header, `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of every secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Bytes of key in a generated secret (the spec asks for 24 to 64).
pub const SECRET_KEY_BYTES: usize = 32;
/// Shortest key accepted in a secret a user chooses.
pub const SECRET_KEY_BYTES_MIN: usize = 24;
/// Longest key accepted in a secret a user chooses.
pub const SECRET_KEY_BYTES_MAX: usize = 64;

/// A new random secret.
pub fn generate_secret() -> Result<String, getrandom::Error> {
    let mut key = [0u8; SECRET_KEY_BYTES];
    getrandom::fill(&mut key)?;
    Ok(format!("{SECRET_PREFIX}{}", BASE64.encode(key)))
}

/// The key of a secret, or why it is not one.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let Some(encoded) = secret.strip_prefix(SECRET_PREFIX) else {
        return Err(format!(
            "a push secret starts with {SECRET_PREFIX:?} followed by base64 (omit it and Herald generates one)"
        ));
    };
    let key = BASE64.decode(encoded).map_err(|error| {
        format!("the part of the push secret after {SECRET_PREFIX:?} is not base64: {error}")
    })?;
    if !(SECRET_KEY_BYTES_MIN..=SECRET_KEY_BYTES_MAX).contains(&key.len()) {
        return Err(format!(
            "a push secret's key must be {SECRET_KEY_BYTES_MIN} to {SECRET_KEY_BYTES_MAX} bytes; this one is {}",
            key.len()
        ));
    }
    Ok(key)
}

/// The `webhook-signature` value for one message: one `v1,<signature>` per key, separated by
/// spaces (the current secret first, then a rotated-out one during its grace period).
pub fn signature_header<'a>(
    keys: impl IntoIterator<Item = &'a [u8]>,
    webhook_id: &str,
    timestamp_s: u64,
    body: &[u8],
) -> String {
    let mut header = String::new();
    for key in keys {
        // HMAC-SHA256 accepts keys of any length, so this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_s.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str("v1,");
        header.push_str(&BASE64.encode(mac.finalize().into_bytes()));
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_accepted_and_differ() {
        let first = generate_secret().unwrap();
        let second = generate_secret().unwrap();
        assert_ne!(first, second);
        assert_eq!(secret_key(&first).unwrap().len(), SECRET_KEY_BYTES);
    }

    #[test]
    fn secrets_are_refused_outside_their_bounds() {
        assert!(secret_key("secret").is_err());
        assert!(secret_key("whsec_***").is_err());
        let short = format!("whsec_{}", BASE64.encode([7u8; SECRET_KEY_BYTES_MIN - 1]));
        assert!(secret_key(&short).is_err());
        let shortest = format!("whsec_{}", BASE64.encode([7u8; SECRET_KEY_BYTES_MIN]));
        assert!(secret_key(&shortest).is_ok());
        let longest = format!("whsec_{}", BASE64.encode([7u8; SECRET_KEY_BYTES_MAX]));
        assert!(secret_key(&longest).is_ok());
        let long = format!("whsec_{}", BASE64.encode([7u8; SECRET_KEY_BYTES_MAX + 1]));
        assert!(secret_key(&long).is_err());
    }

    /// The example of the Standard Webhooks specification's reference libraries: this secret,
    /// id, timestamp and body sign to this value.
    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let header = signature_header(
            [key.as_slice()],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn two_keys_give_two_space_separated_signatures() {
        let header = signature_header([b"first".as_slice(), b"second".as_slice()], "id", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|part| part.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
    }
}
