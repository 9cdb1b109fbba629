//! Delivery receipts: opaque strings that name one delivery, signed so that a receipt Herald
//! never issued is told apart (and answered `unknown`) without any lookup.
//!
//! Layout before base64url: version `u8` (1), kind `u8` (1 = stream), subscription id `u64`,
//! topic id `u64`, partition `u32`, offset `u64`, epoch `u64`, then the first 12 bytes of
//! HMAC-SHA256 over all of that under the server's secret key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const VERSION: u8 = 1;
const KIND_STREAM: u8 = 1;
const KIND_QUEUE: u8 = 2;
const BODY_BYTES: usize = 1 + 1 + 8 + 8 + 4 + 8 + 8;
const MAC_BYTES: usize = 12;

/// What a stream receipt names: a record of a partition, delivered while the partition's
/// assignment had `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamReceipt {
    pub subscription_id: u64,
    pub topic_id: u64,
    pub partition: u32,
    pub offset: u64,
    pub epoch: u64,
}

/// The server's secret for signing receipts.
#[derive(Clone)]
pub struct ReceiptKey([u8; 32]);

impl std::fmt::Debug for ReceiptKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ReceiptKey(..)")
    }
}

impl ReceiptKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A new random key.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn mac(&self, body: &[u8]) -> [u8; MAC_BYTES] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(body);
        let full = mac.finalize().into_bytes();
        let mut truncated = [0u8; MAC_BYTES];
        truncated.copy_from_slice(&full[..MAC_BYTES]);
        truncated
    }

    pub fn sign_stream(&self, receipt: &StreamReceipt) -> String {
        self.sign(KIND_STREAM, receipt)
    }

    /// A queue receipt: `epoch` names the lease (see `queue`).
    pub fn sign_queue(&self, receipt: &StreamReceipt) -> String {
        self.sign(KIND_QUEUE, receipt)
    }

    pub fn verify_queue(&self, text: &str) -> Option<StreamReceipt> {
        self.verify(KIND_QUEUE, text)
    }

    fn sign(&self, kind: u8, receipt: &StreamReceipt) -> String {
        let mut bytes = Vec::with_capacity(BODY_BYTES + MAC_BYTES);
        bytes.push(VERSION);
        bytes.push(kind);
        bytes.extend_from_slice(&receipt.subscription_id.to_le_bytes());
        bytes.extend_from_slice(&receipt.topic_id.to_le_bytes());
        bytes.extend_from_slice(&receipt.partition.to_le_bytes());
        bytes.extend_from_slice(&receipt.offset.to_le_bytes());
        bytes.extend_from_slice(&receipt.epoch.to_le_bytes());
        let mac = self.mac(&bytes);
        bytes.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The receipt a string names, if Herald issued it; `None` for anything else.
    pub fn verify_stream(&self, text: &str) -> Option<StreamReceipt> {
        self.verify(KIND_STREAM, text)
    }

    fn verify(&self, kind: u8, text: &str) -> Option<StreamReceipt> {
        if text.len() > 128 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        if bytes.len() != BODY_BYTES + MAC_BYTES || bytes[0] != VERSION || bytes[1] != kind {
            return None;
        }
        let (body, mac) = bytes.split_at(BODY_BYTES);
        // Constant-time comparison is not needed for secrecy here, but costs nothing.
        let expected = self.mac(body);
        if expected
            .iter()
            .zip(mac)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            != 0
        {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        Some(StreamReceipt {
            subscription_id: u64_at(2),
            topic_id: u64_at(10),
            partition: u32::from_le_bytes(body[18..22].try_into().expect("4 bytes")),
            offset: u64_at(22),
            epoch: u64_at(30),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_receipt_verifies_and_any_change_does_not() {
        let key = ReceiptKey::from_bytes([7; 32]);
        let receipt = StreamReceipt {
            subscription_id: 1,
            topic_id: 2,
            partition: 3,
            offset: 4,
            epoch: 5,
        };
        let text = key.sign_stream(&receipt);
        assert_eq!(key.verify_stream(&text), Some(receipt));
        let other_key = ReceiptKey::from_bytes([8; 32]);
        assert_eq!(other_key.verify_stream(&text), None);
        let mut tampered = text.clone().into_bytes();
        tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            key.verify_stream(std::str::from_utf8(&tampered).unwrap()),
            None
        );
        for junk in ["", "not a receipt", "////", &"A".repeat(500)] {
            assert_eq!(key.verify_stream(junk), None);
        }
    }
}
